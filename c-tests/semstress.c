/*
 * semstress.c - many processes blocking, timing out and being interrupted
 * on one semaphore set at once; no operation may be lost or applied twice.
 *
 *   semstress RANK NPROCS KEY [SECONDS=5]
 *
 * Rank 0 creates semget(KEY, 3, IPC_CREAT|IPC_EXCL|0600|IPC_KDIPC) with
 * values {2, 1, 0} and publishes its id in a shared segment (KEY too);
 * semaphores 0 and 1 are worked on, semaphore 2 (the gate) stays 0.  For
 * SECONDS every rank does random operations:
 *
 *   - semtimedop decrements of one or both semaphores with a random 1-5 ms
 *     time-out (they often time out: EAGAIN);
 *   - increments of one or both;
 *   - timed waits for zero;
 *   - blocking decrements (no time-out) interrupted by a one-shot
 *     setitimer(ITIMER_REAL, 1-5 ms) whose SIGALRM handler is installed
 *     alternately with and without SA_RESTART: success or EINTR;
 *   - blocking decrements of the gate, which can never succeed: they must
 *     return EINTR when the timer fires, with SA_RESTART too (semop is
 *     never restarted, semop(2)); a watchdog thread fails the run if any
 *     single operation takes more than 10 s;
 *   - timed gate decrements: must return EAGAIN.
 *
 * Each rank adds up the net effect of its completed operations per
 * semaphore and writes it into its slot of the segment.  After a final
 * barrier rank 0 checks final value == initial + sum of net effects for
 * every semaphore (no lost, no doubled operation: an operation that timed
 * out or was interrupted must not have been applied, or be applied later),
 * and GETNCNT = GETZCNT = 0 (interrupted waiters withdrawn).  Every rank
 * prints its counts; rank 0 prints
 *
 *   semstress: final=a,b,0 expected=a,b,0 ncnt=0,0,0 zcnt=0,0,0 ops=N ok=N eagain=N eintr=N ...
 *
 * Exit status: 0 ok, 1 violation, 2 setup error.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <sys/sem.h>
#include <sys/time.h>
#include <unistd.h>

#include "common.h"

#define NSEMS 3
#define GATE 2
#define MAXRANKS 64
#define OP_LIMIT 10.0 /* seconds any single operation may take */

union semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};

static const unsigned short initial[NSEMS] = { 2, 1, 0 };

struct control {
    int64_t semid;
    uint64_t ready;
};

struct slot {
    int64_t net[NSEMS];
    uint64_t ops, ok, eagain, eintr, eintr_restart, gate_eintr, gate_eagain;
    uint64_t done;
};

/* -------------------------------------------------------------- watchdog */

static volatile double op_started; /* 0: not in an operation */
static const char *volatile op_name;

static void *watchdog(void *arg)
{
    (void)arg;
    for (;;) {
        usleep(100 * 1000);
        double s = op_started;
        if (s != 0 && now_seconds() - s > OP_LIMIT) {
            fprintf(stderr, "semstress: %s did not return within %.0f s (a time-out or a "
                            "signal not honoured; restarted after an SA_RESTART handler?)\n",
                    op_name, OP_LIMIT);
            _exit(EXIT_VIOLATION);
        }
    }
    return NULL;
}

/* ----------------------------------------------------------------- timer */

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
    (void)sig;
    alarms++;
}

static void install(int restart)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = restart ? SA_RESTART : 0;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGALRM, &sa, NULL) != 0)
        die("sigaction: %s", strerror(errno));
}

static void arm(long usec)
{
    struct itimerval it = { { 0, 0 }, { 0, usec } };
    if (setitimer(ITIMER_REAL, &it, NULL) != 0)
        die("setitimer: %s", strerror(errno));
}

static void disarm(void)
{
    struct itimerval it = { { 0, 0 }, { 0, 0 } };
    setitimer(ITIMER_REAL, &it, NULL);
}

/* ------------------------------------------------------------ operations */

static uint64_t rng;

static uint64_t rnd(uint64_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng % n;
}

static struct slot me;

static int do_op(int id, struct sembuf *s, size_t n, const struct timespec *ts, const char *what)
{
    op_name = what;
    op_started = now_seconds();
    int r = ts ? semtimedop(id, s, n, ts) : semop(id, s, n);
    int e = errno;
    op_started = 0;
    me.ops++;
    if (r == 0) {
        me.ok++;
        for (size_t i = 0; i < n; i++)
            me.net[s[i].sem_num] += s[i].sem_op;
        return 0;
    }
    if (e == EAGAIN)
        me.eagain++;
    else if (e == EINTR)
        me.eintr++;
    else
        fail("%s: unexpected error %s", what, strerror(e));
    errno = e;
    return -1;
}

static struct timespec short_timeout(void)
{
    struct timespec ts = { 0, (long)(1000000 + rnd(4000001)) };
    return ts;
}

int main(int argc, char **argv)
{
    struct args a = parse_args(argc, argv, 0, 5);
    if (a.nprocs > MAXRANKS)
        die("at most %d ranks", MAXRANKS);
    int shmid;
    uint8_t *seg = attach_segment_id(a.key, 3 * PAGE_SIZE, &shmid);
    struct barrier b = barrier_join((struct barrier_shared *)seg, a.nprocs);
    volatile struct control *ctl = (volatile struct control *)(seg + PAGE_SIZE);
    volatile struct slot *slots = (volatile struct slot *)(seg + 2 * PAGE_SIZE);

    if (a.rank == 0) {
        int id = semget(a.key, NSEMS, kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC));
        if (id < 0)
            die("semget: %s (stale set? remove it with ipcrm)", strerror(errno));
        union semun u = { .array = (unsigned short *)initial };
        if (semctl(id, 0, SETALL, u) != 0)
            die("SETALL: %s", strerror(errno));
        ctl->semid = id;
        __atomic_store_n(&ctl->ready, 1, __ATOMIC_SEQ_CST);
    }
    barrier_wait(&b);
    if (!__atomic_load_n(&ctl->ready, __ATOMIC_SEQ_CST))
        die("rank 0 did not publish the set");
    int id = (int)ctl->semid;

    /* The watchdog never takes SIGALRM: the timer must interrupt main. */
    sigset_t alrm, old;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &alrm, &old);
    pthread_t wd;
    if (pthread_create(&wd, NULL, watchdog, NULL) != 0)
        die("pthread_create");
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    rng = mix64((uint64_t)a.rank * 7919 + (uint64_t)getpid()) | 1;
    int restart = a.rank & 1;
    double end = now_seconds() + (double)a.iters;
    while (now_seconds() < end) {
        uint64_t k = rnd(100);
        unsigned short s = (unsigned short)rnd(2);
        struct timespec ts = short_timeout();
        if (k < 28) {
            struct sembuf o = { s, -1, 0 };
            do_op(id, &o, 1, &ts, "timed decrement");
        } else if (k < 36) {
            struct sembuf o[2] = { { 0, -1, 0 }, { 1, -1, 0 } };
            do_op(id, o, 2, &ts, "timed double decrement");
        } else if (k < 58) {
            struct sembuf o = { s, 1, 0 };
            do_op(id, &o, 1, NULL, "increment");
        } else if (k < 63) {
            struct sembuf o[2] = { { 0, 1, 0 }, { 1, 1, 0 } };
            do_op(id, o, 2, NULL, "double increment");
        } else if (k < 67) {
            struct sembuf o = { s, 0, 0 };
            do_op(id, &o, 1, &ts, "timed wait for zero");
        } else if (k < 87) {
            /* Blocking decrement, interrupted if it waits long. */
            restart = !restart;
            install(restart);
            struct sembuf o = { s, -1, 0 };
            arm(1000 + (long)rnd(4001));
            int r = do_op(id, &o, 1, NULL, "interrupted decrement");
            int e = errno;
            disarm();
            if (r != 0 && e == EINTR && restart)
                me.eintr_restart++;
        } else if (k < 95) {
            /* The gate never opens: EINTR, with SA_RESTART too. */
            restart = !restart;
            install(restart);
            struct sembuf o = { GATE, -1, 0 };
            arm(1000 + (long)rnd(4001));
            int r = do_op(id, &o, 1, NULL,
                          restart ? "gate decrement (SA_RESTART handler)" : "gate decrement");
            int e = errno;
            disarm();
            if (r == 0)
                fail("a decrement of the gate (value 0) succeeded");
            if (e != EINTR)
                fail("gate decrement interrupted by SIGALRM: %s, not EINTR", strerror(e));
            me.gate_eintr++;
            if (restart)
                me.eintr_restart++;
        } else {
            struct sembuf o = { GATE, -1, 0 };
            struct timespec t1 = { 0, 1000000 };
            int r = do_op(id, &o, 1, &t1, "timed gate decrement");
            int e = errno;
            if (r == 0)
                fail("a timed decrement of the gate (value 0) succeeded");
            if (e == EAGAIN)
                me.gate_eagain++;
        }
    }
    signal(SIGALRM, SIG_IGN);

    volatile struct slot *mine = &slots[a.rank];
    for (int i = 0; i < NSEMS; i++)
        mine->net[i] = me.net[i];
    mine->ops = me.ops;
    mine->ok = me.ok;
    mine->eagain = me.eagain;
    mine->eintr = me.eintr;
    mine->eintr_restart = me.eintr_restart;
    mine->gate_eintr = me.gate_eintr;
    mine->gate_eagain = me.gate_eagain;
    __atomic_store_n(&mine->done, 1, __ATOMIC_SEQ_CST);
    printf("semstress rank %d: ops=%llu ok=%llu eagain=%llu eintr=%llu eintr_sa_restart=%llu "
           "gate_eintr=%llu gate_eagain=%llu net=%lld,%lld\n",
           a.rank, (unsigned long long)me.ops, (unsigned long long)me.ok,
           (unsigned long long)me.eagain, (unsigned long long)me.eintr,
           (unsigned long long)me.eintr_restart, (unsigned long long)me.gate_eintr,
           (unsigned long long)me.gate_eagain, (long long)me.net[0], (long long)me.net[1]);
    fflush(stdout);
    barrier_wait(&b);

    if (a.rank != 0)
        return 0;
    int64_t expected[NSEMS];
    uint64_t ops = 0, ok = 0, eagain = 0, eintr = 0, eintr_restart = 0, gate_eintr = 0;
    for (int i = 0; i < NSEMS; i++)
        expected[i] = initial[i];
    for (int r = 0; r < a.nprocs; r++) {
        if (!slots[r].done)
            fail("rank %d did not publish its counts", r);
        for (int i = 0; i < NSEMS; i++)
            expected[i] += slots[r].net[i];
        ops += slots[r].ops;
        ok += slots[r].ok;
        eagain += slots[r].eagain;
        eintr += slots[r].eintr;
        eintr_restart += slots[r].eintr_restart;
        gate_eintr += slots[r].gate_eintr;
    }
    unsigned short vals[NSEMS];
    union semun u = { .array = vals };
    if (semctl(id, 0, GETALL, u) != 0)
        die("GETALL: %s", strerror(errno));
    int ncnt[NSEMS], zcnt[NSEMS];
    for (int i = 0; i < NSEMS; i++) {
        ncnt[i] = semctl(id, i, GETNCNT);
        zcnt[i] = semctl(id, i, GETZCNT);
    }
    printf("semstress: final=%u,%u,%u expected=%lld,%lld,%lld ncnt=%d,%d,%d zcnt=%d,%d,%d "
           "ops=%llu ok=%llu eagain=%llu eintr=%llu eintr_sa_restart=%llu gate_eintr=%llu\n",
           vals[0], vals[1], vals[2], (long long)expected[0], (long long)expected[1],
           (long long)expected[2], ncnt[0], ncnt[1], ncnt[2], zcnt[0], zcnt[1], zcnt[2],
           (unsigned long long)ops, (unsigned long long)ok, (unsigned long long)eagain,
           (unsigned long long)eintr, (unsigned long long)eintr_restart,
           (unsigned long long)gate_eintr);
    fflush(stdout);
    int bad = 0;
    for (int i = 0; i < NSEMS; i++)
        bad |= vals[i] != expected[i] || ncnt[i] != 0 || zcnt[i] != 0;
    if (semctl(id, 0, IPC_RMID) != 0)
        die("IPC_RMID: %s", strerror(errno));
    remove_segment(shmid);
    if (bad)
        fail("violation: the final values are not initial + completed operations, or "
             "waiters are left");
    if (eintr == 0 || eagain == 0)
        fail("the run produced no %s: nothing was tested", eintr == 0 ? "EINTR" : "EAGAIN");
    return 0;
}
