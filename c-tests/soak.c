/*
 * soak - NPROCS processes doing random shared-memory and semaphore
 * operations for SECONDS, with invariants checked all along and at the end.
 *
 *   soak RANK NPROCS KEY [SECONDS=10]
 *
 * Segment KEY: page 0 control; pages 1..ACCTS one account each
 * { balance, ops, check = mix(balance, ops) }; then one results page per
 * rank.  Set KEY (semget): ACCTS locks (1 each), TOKENS (8) and DONE (0).
 * Rank 0 creates the set (IPC_EXCL), sets it with SETALL and raises the
 * control page's ready flag; the others wait for the flag.
 *
 * Each operation, at random:
 *   deposit   lock one account (SEM_UNDO), check it, balance += 1, ops += 1
 *   transfer  lock two accounts in one semop, check both, move 1..5 from
 *             one to the other, ops += 1 on both, unlock both in one semop
 *   peek      read an account without its lock: its ops never goes back
 *             (sequential consistency: a process never sees an older
 *             value after a newer one)
 *   tokens    take 1..3 TOKENS (SEM_UNDO), check GETVAL <= 8, give back
 *   try       take all 8 TOKENS with IPC_NOWAIT: success or EAGAIN
 * Every process counts, per account, the operations it completed and the
 * net amount it moved in; at the end it publishes them, adds 1 to DONE,
 * and rank 0 (after taking NPROCS from DONE) checks that every account's
 * ops and balance equal the sums of what the processes completed, that the
 * balances sum to the deposits, that TOKENS is 8 and every lock 1, then
 * prints
 *   soak: nprocs=P seconds=S ops=N deposits=D transfers=T peeks=K tokens=X ok
 * and removes the set and the segment.
 * Exit status: 0 ok, 1 violation, 2 setup error.
 */
#define _GNU_SOURCE
#include <sys/sem.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#define ACCTS 16
#define TOKENS_INIT 8
#define SEM_TOKENS ACCTS
#define SEM_DONE (ACCTS + 1)
#define NSEMS (ACCTS + 2)

union semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};

struct account {
    int64_t balance;
    uint64_t ops;
    uint64_t check;
};

struct control {
    uint64_t ready;
};

struct result {
    uint64_t ops[ACCTS];
    int64_t moved[ACCTS]; /* net amount in (deposits and transfers) */
    uint64_t deposits, transfers, peeks, tokens, done;
};

static uint64_t check_of(const volatile struct account *a)
{
    return mix64((uint64_t)a->balance * 0x9e3779b97f4a7c15ull ^ a->ops);
}

static void verify(const volatile struct account *a, int k, const char *when)
{
    if (a->check != check_of(a))
        fail("account %d %s: balance %lld ops %llu but check %#llx: a torn or stale page", k, when,
             (long long)a->balance, (unsigned long long)a->ops, (unsigned long long)a->check);
}

static void sem(int id, struct sembuf *ops, size_t n, const char *what)
{
    struct timespec limit = { 30, 0 };
    while (semtimedop(id, ops, n, &limit) != 0) {
        if (errno == EINTR)
            continue;
        fail("semop (%s): %s", what, strerror(errno));
    }
}

int main(int argc, char **argv)
{
    struct args a = parse_args(argc, argv, 0, 10);
    size_t size = (size_t)(1 + ACCTS + a.nprocs) * PAGE_SIZE;
    int shmid;
    uint8_t *seg = attach_segment_id(a.key, size, &shmid);
    volatile struct control *ctl = (volatile struct control *)seg;
    volatile struct account *acct[ACCTS];
    for (int k = 0; k < ACCTS; k++)
        acct[k] = (volatile struct account *)(seg + (size_t)(1 + k) * PAGE_SIZE);
    volatile struct result *res = (volatile struct result *)(seg + (size_t)(1 + ACCTS + a.rank) * PAGE_SIZE);

    int id;
    if (a.rank == 0) {
        id = semget(a.key, NSEMS, kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC));
        if (id < 0)
            die("semget(create): %s (stale set? remove it with ipcrm)", strerror(errno));
        unsigned short init[NSEMS];
        for (int k = 0; k < ACCTS; k++)
            init[k] = 1;
        init[SEM_TOKENS] = TOKENS_INIT;
        init[SEM_DONE] = 0;
        union semun u = { .array = init };
        if (semctl(id, 0, SETALL, u) != 0)
            die("SETALL: %s", strerror(errno));
        for (int k = 0; k < ACCTS; k++)
            acct[k]->check = check_of(acct[k]);
        __atomic_store_n(&ctl->ready, 1, __ATOMIC_SEQ_CST);
    } else {
        double t0 = now_seconds();
        unsigned spins = 0;
        while (__atomic_load_n(&ctl->ready, __ATOMIC_SEQ_CST) == 0) {
            if (now_seconds() - t0 > 60)
                die("rank 0 did not start within 60 s");
            spin_pause(&spins);
        }
        id = semget(a.key, NSEMS, kdipc_flags(0600 | IPC_KDIPC));
        if (id < 0)
            die("semget: %s", strerror(errno));
    }

    uint64_t rng = mix64((uint64_t)a.key * 31 + (uint64_t)a.rank + 1);
    uint64_t last_ops[ACCTS] = { 0 };
    uint64_t ops_done[ACCTS] = { 0 };
    int64_t moved[ACCTS] = { 0 };
    uint64_t deposits = 0, transfers = 0, peeks = 0, tokens = 0, n = 0;
    double deadline = now_seconds() + (double)a.iters;
    while ((n & 63) != 0 || now_seconds() < deadline) {
        n++;
        rng = mix64(rng);
        int r = (int)(rng % 100);
        int k = (int)((rng >> 8) % ACCTS);
        if (r < 35) {
            struct sembuf p = { (unsigned short)k, -1, SEM_UNDO }, v = { (unsigned short)k, 1, SEM_UNDO };
            sem(id, &p, 1, "lock");
            verify(acct[k], k, "under its lock");
            acct[k]->balance += 1;
            acct[k]->ops += 1;
            acct[k]->check = check_of(acct[k]);
            sem(id, &v, 1, "unlock");
            ops_done[k]++;
            moved[k] += 1;
            deposits++;
        } else if (r < 60) {
            int j = (int)((rng >> 16) % (ACCTS - 1));
            if (j >= k)
                j++;
            int64_t amount = 1 + (int64_t)((rng >> 24) % 5);
            struct sembuf p[2] = { { (unsigned short)j, -1, SEM_UNDO }, { (unsigned short)k, -1, SEM_UNDO } };
            struct sembuf v[2] = { { (unsigned short)j, 1, SEM_UNDO }, { (unsigned short)k, 1, SEM_UNDO } };
            sem(id, p, 2, "lock two");
            verify(acct[j], j, "under its lock");
            verify(acct[k], k, "under its lock");
            acct[j]->balance -= amount;
            acct[j]->ops += 1;
            acct[j]->check = check_of(acct[j]);
            acct[k]->balance += amount;
            acct[k]->ops += 1;
            acct[k]->check = check_of(acct[k]);
            sem(id, v, 2, "unlock two");
            ops_done[j]++;
            ops_done[k]++;
            moved[j] -= amount;
            moved[k] += amount;
            transfers++;
        } else if (r < 85) {
            uint64_t ops = acct[k]->ops;
            if (ops < last_ops[k])
                fail("account %d: ops went back from %llu to %llu (not sequentially consistent)", k,
                     (unsigned long long)last_ops[k], (unsigned long long)ops);
            last_ops[k] = ops;
            peeks++;
        } else if (r < 97) {
            short t = (short)(1 + (rng >> 32) % 3);
            struct sembuf p = { SEM_TOKENS, (short)-t, SEM_UNDO }, v = { SEM_TOKENS, t, SEM_UNDO };
            sem(id, &p, 1, "take tokens");
            int val = semctl(id, SEM_TOKENS, GETVAL);
            if (val < 0 || val > TOKENS_INIT - t)
                fail("TOKENS is %d while this process holds %d of %d", val, t, TOKENS_INIT);
            sem(id, &v, 1, "give tokens");
            tokens++;
        } else {
            struct sembuf p = { SEM_TOKENS, -TOKENS_INIT, IPC_NOWAIT | SEM_UNDO };
            if (semop(id, &p, 1) == 0) {
                struct sembuf v = { SEM_TOKENS, TOKENS_INIT, SEM_UNDO };
                sem(id, &v, 1, "give all tokens");
                tokens++;
            } else if (errno != EAGAIN) {
                fail("semop(IPC_NOWAIT): %s, expected EAGAIN", strerror(errno));
            }
        }
    }

    for (int k = 0; k < ACCTS; k++) {
        res->ops[k] = ops_done[k];
        res->moved[k] = moved[k];
    }
    res->deposits = deposits;
    res->transfers = transfers;
    res->peeks = peeks;
    res->tokens = tokens;
    __atomic_store_n(&res->done, 1, __ATOMIC_SEQ_CST);
    struct sembuf done = { SEM_DONE, 1, 0 };
    sem(id, &done, 1, "done");
    if (a.rank != 0) {
        printf("soak rank %d: ops=%llu\n", a.rank, (unsigned long long)n);
        return 0;
    }

    struct sembuf all = { SEM_DONE, (short)-a.nprocs, 0 };
    sem(id, &all, 1, "wait for every rank");
    uint64_t tot_ops = 0, tot_dep = 0, tot_tr = 0, tot_peek = 0, tot_tok = 0;
    int64_t sum = 0;
    for (int k = 0; k < ACCTS; k++) {
        uint64_t ops = 0;
        int64_t in = 0;
        for (int p = 0; p < a.nprocs; p++) {
            volatile struct result *rp =
                (volatile struct result *)(seg + (size_t)(1 + ACCTS + p) * PAGE_SIZE);
            if (!rp->done)
                fail("rank %d did not publish its counts", p);
            ops += rp->ops[k];
            in += rp->moved[k];
        }
        verify(acct[k], k, "at the end");
        if (acct[k]->ops != ops || acct[k]->balance != in)
            fail("account %d: ops %llu balance %lld, but the processes completed %llu ops moving %lld",
                 k, (unsigned long long)acct[k]->ops, (long long)acct[k]->balance,
                 (unsigned long long)ops, (long long)in);
        sum += acct[k]->balance;
    }
    for (int p = 0; p < a.nprocs; p++) {
        volatile struct result *rp = (volatile struct result *)(seg + (size_t)(1 + ACCTS + p) * PAGE_SIZE);
        tot_dep += rp->deposits;
        tot_tr += rp->transfers;
        tot_peek += rp->peeks;
        tot_tok += rp->tokens;
    }
    tot_ops = tot_dep + tot_tr + tot_peek + tot_tok;
    if (sum != (int64_t)tot_dep)
        fail("the balances sum to %lld, the deposits to %llu", (long long)sum, (unsigned long long)tot_dep);
    unsigned short vals[NSEMS];
    union semun g = { .array = vals };
    if (semctl(id, 0, GETALL, g) != 0)
        die("GETALL: %s", strerror(errno));
    for (int k = 0; k < ACCTS; k++)
        if (vals[k] != 1)
            fail("lock %d is %u at the end, not 1", k, vals[k]);
    if (vals[SEM_TOKENS] != TOKENS_INIT || vals[SEM_DONE] != 0)
        fail("TOKENS %u DONE %u at the end, expected %d and 0", vals[SEM_TOKENS], vals[SEM_DONE],
             TOKENS_INIT);
    printf("soak: nprocs=%d seconds=%ld ops=%llu deposits=%llu transfers=%llu peeks=%llu tokens=%llu ok\n",
           a.nprocs, a.iters, (unsigned long long)tot_ops, (unsigned long long)tot_dep,
           (unsigned long long)tot_tr, (unsigned long long)tot_peek, (unsigned long long)tot_tok);
    if (semctl(id, 0, IPC_RMID) != 0)
        die("semctl(IPC_RMID): %s", strerror(errno));
    remove_segment(shmid);
    return 0;
}
