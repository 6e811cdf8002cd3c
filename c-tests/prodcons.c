/*
 * prodcons.c - bounded-buffer producers and consumers: a ring buffer in a
 * System V shared segment guarded by a System V semaphore set.
 *
 *   prodcons RANK NPROCS KEY [ITEMS=100000]
 *
 * NPROCS is even (4 in the tests): ranks 0 .. NPROCS/2-1 produce, the
 * others consume.  Each producer puts ITEMS/(NPROCS/2) items tagged
 * (producer, sequence number) into a ring of SLOTS slots; the set
 * semget(KEY, 3, IPC_CREAT|0600|IPC_KDIPC) holds EMPTY (= SLOTS), FULL (= 0)
 * and MUTEX (= 1).  Producers use the classic separate operations
 * P(EMPTY) P(MUTEX) ... V(MUTEX) V(FULL); consumers take FULL and MUTEX in
 * one atomic two-operation semop and release MUTEX and EMPTY in another.
 * No SEM_UNDO.  When a producer is done it puts one end marker; a consumer
 * stops at the first end marker it takes (as many markers as consumers, so
 * every item before the last marker is consumed).
 *
 * Initialisation (Stevens' pattern): rank 0 creates the set with IPC_EXCL,
 * sets the values with SETALL and then does one semop, which sets
 * sem_otime; every other rank retries semget without IPC_CREAT until the
 * set exists and then waits for sem_otime != 0 (IPC_STAT) before using it.
 *
 * Checks: every slot carries the item and a check word (torn or stale
 * slots are violations); each consumer sees each producer's items in
 * strictly increasing order (FIFO ring under a mutex); at the end every
 * consumer publishes a bitmap of what it took, and rank 0 checks that every
 * item of every producer was taken by exactly one consumer.  A final
 * barrier in the segment; then rank 0 removes the set and the segment and
 * prints
 *
 *   prodcons: items=N producers=P consumers=C consumed=N duplicates=0
 *   missing=0 out_of_order=0 torn=0 per_consumer=a,b
 *
 * Failure runs (PRODCONS_VICTIM=RANK:N:MODE in the environment of every
 * rank): rank RANK (not 0) dies by SIGKILL after N items of its own, at a
 * point MODE chooses:
 *   idle   outside the critical section, 300 ms after its last operation
 *          (the others have taken the ring page from it meanwhile);
 *   now    right after its last operation (the ring page may die with it);
 *   mutex  a producer only: holding MUTEX (taken with SEM_UNDO) and one
 *          EMPTY permit, before it touches the ring.
 * Every rank then takes MUTEX with SEM_UNDO (so that the holder's death
 * releases it), waits at the start until every rank joined (each holds a
 * read copy of the barrier page), and the final barrier counts the
 * survivors.  Producers put their end markers only once every item is in
 * (so that the surviving consumers take every item before they stop), and
 * rank 0 also puts a dead producer's marker.  Rank 0 checks the totals knowing what died: a dead
 * producer put N items (and no marker), a dead consumer took N items
 * (missing = N: its bitmap died with it) and left one marker in the ring;
 * the MUTEX holder also took one EMPTY permit for good.  The summary line
 * gains victim=RANK lost_items=N.  PRODCONS_STALL=SECONDS: a semaphore
 * wait longer than that ends the rank (exit 3, "no progress"), for runs
 * where the partners it waits for may die too.
 *
 * Exit status: 0 ok, 1 violation, 2 setup error.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <sys/sem.h>
#include <unistd.h>

#include "common.h"

#define SLOTS 64
#define EMPTY 0
#define FULL 1
#define MUTEX 2
#define END_SEQ 0xffffffffu
#define MAXC 16

union semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};

/* Page 1: the ring. */
struct ring {
    uint64_t in;  /* next slot to fill (total puts) */
    uint64_t out; /* next slot to take (total takes) */
    struct {
        uint64_t item;
        uint64_t check;
    } slot[SLOTS];
    uint64_t items_in; /* puts of items, end markers not counted */
};

/* Page 2: per-consumer results. */
struct result {
    uint64_t taken;        /* items, end markers not counted */
    uint64_t out_of_order;
    uint64_t torn;
    uint64_t done;         /* 1 when the bitmap is written */
    uint64_t pad[4];
};

static uint64_t check_of(uint64_t item)
{
    return mix64(item ^ 0x5eed);
}

/* PRODCONS_STALL=SECONDS: a semaphore wait longer than that gives up
 * (exit 3: a partner it waits for is dead); 0: wait for ever. */
static long stall_limit;

static void sem(int id, struct sembuf *ops, size_t n, const char *what)
{
    struct timespec limit = { stall_limit, 0 };
    while (semtimedop(id, ops, n, stall_limit ? &limit : NULL) != 0) {
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN && stall_limit) {
            fprintf(stderr, "prodcons: no progress (%s) for %ld s (a partner dead?)\n", what,
                    stall_limit);
            exit(3);
        }
        fail("semop (%s): %s", what, strerror(errno));
    }
}

/* SEM_UNDO on MUTEX in failure runs (PRODCONS_VICTIM). */
static short mutex_flg;

static short flg(int num)
{
    return num == MUTEX ? mutex_flg : 0;
}

static void P1(int id, int num, const char *what)
{
    struct sembuf s = { (unsigned short)num, -1, flg(num) };
    sem(id, &s, 1, what);
}

static void V1(int id, int num, const char *what)
{
    struct sembuf s = { (unsigned short)num, 1, flg(num) };
    sem(id, &s, 1, what);
}

/* PRODCONS_VICTIM=RANK:N:MODE, see the header. */
struct victim {
    int rank;     /* -1: none */
    uint64_t n;
    char mode[8]; /* idle, now, mutex */
};

static struct victim parse_victim(int nprocs)
{
    struct victim v = { -1, 0, "" };
    const char *e = getenv("PRODCONS_VICTIM");
    if (e == NULL || *e == '\0')
        return v;
    unsigned long long n;
    if (sscanf(e, "%d:%llu:%7s", &v.rank, &n, v.mode) != 3 || v.rank <= 0 || v.rank >= nprocs ||
        (strcmp(v.mode, "idle") != 0 && strcmp(v.mode, "now") != 0 && strcmp(v.mode, "mutex") != 0))
        die("PRODCONS_VICTIM: expected RANK:N:idle|now|mutex with 0 < RANK < NPROCS, got '%s'", e);
    if (strcmp(v.mode, "mutex") == 0 && v.rank >= nprocs / 2)
        die("PRODCONS_VICTIM: mode mutex is for a producer");
    v.n = n;
    return v;
}

/* The victim, after its N items: dies as its mode says. */
static void die_now(const struct victim *v, int id)
{
    fflush(stdout);
    if (strcmp(v->mode, "idle") == 0)
        usleep(300 * 1000);
    if (strcmp(v->mode, "mutex") == 0) {
        P1(id, EMPTY, "victim P(empty)");
        P1(id, MUTEX, "victim P(mutex)");
    }
    raise(SIGKILL);
}

/* Rank 0: creates and initialises; the others wait for sem_otime. */
static int open_set(key_t key, int rank)
{
    if (rank == 0) {
        int id = semget(key, 3, kdipc_flags(IPC_CREAT | IPC_EXCL | 0600 | IPC_KDIPC));
        if (id < 0)
            die("semget(create): %s (stale set? remove it with ipcrm)", strerror(errno));
        unsigned short init[3] = { SLOTS, 0, 1 };
        union semun a = { .array = init };
        if (semctl(id, 0, SETALL, a) != 0)
            die("SETALL: %s", strerror(errno));
        /* One operation, to set sem_otime: the set is ready. */
        P1(id, MUTEX, "init");
        V1(id, MUTEX, "init");
        return id;
    }
    double t0 = now_seconds();
    int id;
    for (;;) {
        id = semget(key, 3, kdipc_flags(0600 | IPC_KDIPC));
        if (id >= 0)
            break;
        if (errno != ENOENT)
            die("semget: %s", strerror(errno));
        if (now_seconds() - t0 > 60)
            die("the set was not created within 60 s");
        usleep(1000);
    }
    for (;;) {
        struct semid_ds ds;
        union semun a = { .buf = &ds };
        if (semctl(id, 0, IPC_STAT, a) != 0)
            die("IPC_STAT: %s", strerror(errno));
        if (ds.sem_nsems != 3)
            die("the set has %lu semaphores, not 3", (unsigned long)ds.sem_nsems);
        if (ds.sem_otime != 0)
            return id;
        if (now_seconds() - t0 > 60)
            fail("sem_otime still 0 after 60 s: the set was never initialised, or "
                 "semop does not set sem_otime");
        usleep(1000);
    }
}

int main(int argc, char **argv)
{
    struct args a = parse_args(argc, argv, 0, 100000);
    if (a.nprocs % 2 != 0 || a.nprocs / 2 > MAXC)
        die("NPROCS must be even and at most %d", 2 * MAXC);
    int np = a.nprocs / 2, nc = a.nprocs / 2;
    uint64_t per = (uint64_t)a.iters / (uint64_t)np;
    if (per < 1)
        die("ITEMS must be at least the number of producers");
    uint64_t items = per * (uint64_t)np;
    size_t bitmap_bytes = ((per + 63) / 64) * 8;
    size_t bitmap_pages = (bitmap_bytes * (size_t)np + PAGE_SIZE - 1) / PAGE_SIZE;
    size_t size = (3 + bitmap_pages * (size_t)nc) * PAGE_SIZE;

    struct victim vic = parse_victim(a.nprocs);
    if (getenv("PRODCONS_STALL") != NULL)
        stall_limit = parse_long("PRODCONS_STALL", getenv("PRODCONS_STALL"));
    if (vic.rank >= 0)
        mutex_flg = SEM_UNDO;
    int vprod = vic.rank >= 0 && vic.rank < np, vcons = vic.rank >= np;
    if (vic.rank >= 0 && vic.n > per)
        die("PRODCONS_VICTIM: N is more than the %llu items a rank handles", (unsigned long long)per);

    int shmid;
    uint8_t *seg = attach_segment_id(a.key, size, &shmid);
    struct barrier b = barrier_join((struct barrier_shared *)seg, a.nprocs);
    if (vic.rank >= 0) {
        /* Everyone joined: each rank holds a current read copy of the
         * barrier page, whoever wrote it last. */
        unsigned spins = 0;
        while (__atomic_load_n(&b.shared->joined, __ATOMIC_SEQ_CST) < (uint64_t)a.nprocs)
            spin_pause(&spins);
        b.nprocs = (uint64_t)a.nprocs - 1; /* the final barrier: survivors */
    }
    volatile struct ring *ring = (volatile struct ring *)(seg + PAGE_SIZE);
    volatile struct result *res = (volatile struct result *)(seg + 2 * PAGE_SIZE);

    int id = open_set(a.key, a.rank);
    double t0 = now_seconds();

    if (a.rank < np) {
        /* Producer. */
        uint64_t me = (uint64_t)a.rank;
        uint64_t e_items = vprod ? items - per + vic.n : items;
        for (uint64_t seq = 0; seq <= per; seq++) {
            uint64_t item = me << 32 | (seq == per ? END_SEQ : seq);
            if (seq == per && vic.rank >= 0) {
                /* Markers after every item (see the header). */
                for (;;) {
                    P1(id, MUTEX, "producer P(mutex) (waiting for the other puts)");
                    uint64_t in = ring->items_in;
                    V1(id, MUTEX, "producer V(mutex) (waiting for the other puts)");
                    if (in >= e_items)
                        break;
                    usleep(1000);
                }
            }
            P1(id, EMPTY, "producer P(empty)");
            P1(id, MUTEX, "producer P(mutex)");
            uint64_t in = ring->in;
            ring->slot[in % SLOTS].item = item;
            ring->slot[in % SLOTS].check = check_of(item);
            ring->in = in + 1;
            if (seq != per)
                ring->items_in++;
            V1(id, MUTEX, "producer V(mutex)");
            V1(id, FULL, "producer V(full)");
            if (a.rank == vic.rank && seq + 1 == vic.n)
                die_now(&vic, id);
        }
        if (vprod && a.rank == 0) {
            /* The dead producer's end marker (every item is in). */
            uint64_t item = (uint64_t)vic.rank << 32 | END_SEQ;
            P1(id, EMPTY, "producer P(empty)");
            P1(id, MUTEX, "producer P(mutex)");
            uint64_t in = ring->in;
            ring->slot[in % SLOTS].item = item;
            ring->slot[in % SLOTS].check = check_of(item);
            ring->in = in + 1;
            V1(id, MUTEX, "producer V(mutex)");
            V1(id, FULL, "producer V(full)");
        }
    } else {
        /* Consumer. */
        int c = a.rank - np;
        uint64_t *bitmap = calloc((size_t)np, bitmap_bytes);
        int64_t *last = malloc(sizeof(int64_t) * (size_t)np);
        if (bitmap == NULL || last == NULL)
            die("out of memory");
        for (int p = 0; p < np; p++)
            last[p] = -1;
        uint64_t taken = 0, ooo = 0, torn = 0, dup_local = 0; /* torn: fail() at once */
        for (;;) {
            struct sembuf take[2] = { { FULL, -1, 0 }, { MUTEX, -1, mutex_flg } };
            sem(id, take, 2, "consumer P(full)+P(mutex)");
            uint64_t out = ring->out;
            if (out >= ring->in)
                fail("consumer %d: ring empty (out=%llu in=%llu) though FULL allowed a take",
                     c, (unsigned long long)out, (unsigned long long)ring->in);
            uint64_t item = ring->slot[out % SLOTS].item;
            uint64_t check = ring->slot[out % SLOTS].check;
            ring->out = out + 1;
            struct sembuf give[2] = { { MUTEX, 1, mutex_flg }, { EMPTY, 1, 0 } };
            sem(id, give, 2, "consumer V(mutex)+V(empty)");
            if (a.rank == vic.rank && taken + 1 == vic.n && (item & 0xffffffffu) != END_SEQ)
                die_now(&vic, id);

            uint64_t p = item >> 32;
            uint32_t seq = (uint32_t)item;
            if (check != check_of(item) || p >= (uint64_t)np || (seq != END_SEQ && seq >= per))
                fail("consumer %d: slot %llu holds a torn or stale item %#llx (check %#llx)", c,
                     (unsigned long long)(out % SLOTS), (unsigned long long)item,
                     (unsigned long long)check);
            if (seq == END_SEQ)
                break;
            if ((int64_t)seq <= last[p])
                ooo++;
            last[p] = seq;
            uint64_t *bm = bitmap + p * (bitmap_bytes / 8);
            if (bm[seq / 64] & (1ULL << (seq % 64)))
                dup_local++;
            bm[seq / 64] |= 1ULL << (seq % 64);
            taken++;
        }
        /* Publish: the bitmap, then the counts (a duplicate taken by this
         * consumer itself also shows as out of order). */
        uint8_t *mine = seg + (3 + bitmap_pages * (size_t)c) * PAGE_SIZE;
        memcpy(mine, bitmap, bitmap_bytes * (size_t)np);
        res[c].taken = taken;
        res[c].out_of_order = ooo + dup_local;
        res[c].torn = torn;
        __atomic_store_n(&res[c].done, 1, __ATOMIC_SEQ_CST);
        free(bitmap);
        free(last);
    }
    double dt = now_seconds() - t0;

    if (stall_limit) {
        /* The final barrier gives up too. */
        b.epoch++;
        uint64_t target = b.epoch * b.nprocs;
        __atomic_fetch_add(&b.shared->arrived, 1, __ATOMIC_SEQ_CST);
        double w0 = now_seconds();
        unsigned spins = 0;
        while (__atomic_load_n(&b.shared->arrived, __ATOMIC_SEQ_CST) < target) {
            if (now_seconds() - w0 > (double)stall_limit) {
                fprintf(stderr, "prodcons: no progress (final barrier) for %ld s (a partner dead?)\n",
                        stall_limit);
                exit(3);
            }
            spin_pause(&spins);
        }
    } else {
        barrier_wait(&b);
    }
    int bad = 0;
    if (a.rank == 0) {
        uint64_t consumed = 0, ooo = 0, torn = 0, dups = 0, missing = 0;
        char per_consumer[256] = "";
        size_t len = 0;
        for (int c = 0; c < nc; c++) {
            if (vcons && c == vic.rank - np)
                continue; /* died with its results */
            if (!res[c].done)
                fail("consumer %d did not publish its results", c);
            consumed += res[c].taken;
            ooo += res[c].out_of_order;
            torn += res[c].torn;
            len += (size_t)snprintf(per_consumer + len, sizeof per_consumer - len, "%s%llu",
                                    c ? "," : "", (unsigned long long)res[c].taken);
        }
        for (int p = 0; p < np; p++) {
            uint64_t put = vprod && p == vic.rank ? vic.n : per;
            for (uint64_t seq = 0; seq < put; seq++) {
                int n = 0;
                for (int c = 0; c < nc; c++) {
                    if (vcons && c == vic.rank - np)
                        continue;
                    const uint64_t *bm = (const uint64_t *)(seg + (3 + bitmap_pages * (size_t)c) *
                                                                      PAGE_SIZE) +
                                         (size_t)p * (bitmap_bytes / 8);
                    n += (bm[seq / 64] >> (seq % 64)) & 1;
                }
                if (n == 0)
                    missing++;
                else if (n > 1)
                    dups += (uint64_t)n - 1;
            }
        }
        /* The ring's own counters: every put taken. */
        uint64_t in = ring->in, out = ring->out;
        unsigned short vals[3];
        union semun ga = { .array = vals };
        if (semctl(id, 0, GETALL, ga) != 0)
            die("GETALL: %s", strerror(errno));
        printf("prodcons: items=%llu producers=%d consumers=%d consumed=%llu duplicates=%llu "
               "missing=%llu out_of_order=%llu torn=%llu per_consumer=%s puts=%llu takes=%llu "
               "final_sems=%u,%u,%u seconds=%.2f victim=%d lost_items=%llu\n",
               (unsigned long long)items, np, nc, (unsigned long long)consumed,
               (unsigned long long)dups, (unsigned long long)missing, (unsigned long long)ooo,
               (unsigned long long)torn, per_consumer, (unsigned long long)in,
               (unsigned long long)out, vals[0], vals[1], vals[2], dt, vic.rank,
               (unsigned long long)(vcons ? vic.n : 0));
        uint64_t markers = (uint64_t)np;
        /* Expected totals, given what died. */
        uint64_t e_items = items, e_consumed = items, e_missing = 0, e_left = 0, e_permits = SLOTS;
        if (vprod)
            e_items = e_consumed = items - per + vic.n; /* its marker was put by rank 0 */
        if (vcons) {
            e_consumed = items - vic.n;
            e_missing = vic.n;
            e_left = 1; /* one end marker nobody takes */
        }
        if (vprod && strcmp(vic.mode, "mutex") == 0)
            e_permits = SLOTS - 1;
        bad = consumed != e_consumed || dups || missing != e_missing || ooo || torn ||
              in != e_items + markers || out != e_items + markers - e_left ||
              vals[EMPTY] != e_permits - e_left || vals[FULL] != e_left || vals[MUTEX] != 1;
        if (semctl(id, 0, IPC_RMID) != 0)
            die("semctl(IPC_RMID): %s", strerror(errno));
        remove_segment(shmid);
    } else {
        printf("prodcons rank %d: %s seconds=%.2f\n", a.rank, a.rank < np ? "producer" : "consumer",
               dt);
    }
    if (bad)
        fail("violation: not every item was consumed exactly once and in order "
             "(or the semaphores ended wrong)");
    return 0;
}
