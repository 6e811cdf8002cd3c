#!/bin/sh
# Builds every c-tests/*.c into c-tests/bin/NAME (bin/ is gitignored).
#   ./build.sh            uses $CC (default cc); extra flags via $CFLAGS
set -eu
cd "$(dirname "$0")"
CC=${CC:-cc}
mkdir -p bin
for src in *.c; do
    name=${src%.c}
    # shellcheck disable=SC2086  # CFLAGS is a list of flags
    "$CC" -std=gnu11 -O2 -Wall -Wextra -Werror -pthread ${CFLAGS:-} \
        -o "bin/$name" "$src"
done
echo "built: $(cd bin && ls | tr '\n' ' ')"
