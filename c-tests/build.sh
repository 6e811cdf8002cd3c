#!/bin/sh
# Builds every c-tests/*.c into c-tests/bin/NAME (bin/ is gitignored).
#   ./build.sh            uses $CC (default cc); extra flags via $CFLAGS
# The MPI programs (*_mpi.c) are built with mpicc when it is installed
# (Debian: openmpi-bin libopenmpi-dev) and skipped with a note otherwise.
set -eu
cd "$(dirname "$0")"
CC=${CC:-cc}
mkdir -p bin
for src in *.c; do
    name=${src%.c}
    cc=$CC
    case $name in
    *_mpi)
        if ! command -v mpicc >/dev/null; then
            echo "build.sh: mpicc not found, skipping $src (install openmpi-bin libopenmpi-dev)" >&2
            continue
        fi
        cc=mpicc ;;
    esac
    # shellcheck disable=SC2086  # CFLAGS is a list of flags
    "$cc" -std=gnu11 -O2 -Wall -Wextra -Werror -pthread ${CFLAGS:-} \
        -o "bin/$name" "$src"
done
echo "built: $(cd bin && ls | tr '\n' ' ')"
