/* Counts RTP off many UDP sockets on a thread of its own, each datagram stamped by the kernel.
 *
 * A load-test client with hundreds of subscribers reads every copy an SFU sends. In Python that
 * costs several microseconds a packet (a selector wake-up, a recvmsg, a callback), on the same
 * cores as the server it measures. Here one thread waits on all the sockets with epoll, reads
 * them with recvmmsg and keeps, per RTP packet of a media payload type, only what the
 * statistics need: the socket's slot, the kernel's receive time (SO_TIMESTAMPNS), the RTP
 * timestamp, sequence number and size. SRTP leaves the RTP header in the clear, so nothing is
 * decrypted. Every other datagram (STUN, DTLS, RTCP) is queued whole for the Python side, which
 * an eventfd wakes, to hand on to the connection's own protocol. RTP of another payload type
 * (RTX) is only counted. Reference: PyCounter in trackyard/loadtest/rtpcount.py.
 *
 * The thread yields to the server it measures: it runs as SCHED_IDLE (``idle``: only on a core
 * nothing else wants; its ``nice`` value if that is refused) and pauses ``pause_us`` between
 * rounds, so it wakes a few hundred times a second and reads many
 * datagrams each time, instead of preempting a busy SFU process for every packet it sends.
 * The kernel's timestamps keep the arrival times exact however late the datagrams are read.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "rtpcount.h"

#define BATCH 32
#define DGRAM 2048 /* larger datagrams are cut: none of an SFU's is larger (MTU ~1200) */
#define STOP_KEY UINT64_MAX

struct tyc {
    int epfd, wake_fd, stop_fd;
    int pause_us, nice, idle;
    int idle_got; /* what the thread got: see tyc_idle */
    pthread_t thread;
    int running;
    pthread_mutex_t mu;
    tyc_rec *recs; /* appended by the thread, taken by tyc_take */
    size_t n_recs, cap_recs;
    tyc_other *others; /* a ring: [head, head + n_others) */
    size_t head, n_others, cap_others;
    int32_t slots;
    uint8_t *media; /* slots x 128: payload types counted as media, per slot */
    uint64_t *rtx;  /* slots: RTP of another payload type, counted only */
    uint64_t *counted; /* slots: media packets recorded */
    uint64_t dropped; /* records or datagrams refused by a full buffer */
    /* the thread's own */
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_storage addrs[BATCH];
    uint8_t bufs[BATCH][DGRAM];
    uint8_t ctrl[BATCH][CMSG_SPACE(sizeof(struct timespec))];
};

static double stamp(struct msghdr *h) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(c), sizeof(ts));
            return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
        }
    }
    struct timespec now; /* not stamped (timestamps off): when read */
    clock_gettime(CLOCK_REALTIME, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* under mu */
static void take_datagram(struct tyc *t, int32_t slot, const uint8_t *d, size_t len,
                          struct msghdr *h, int *wake) {
    int rtp = len >= 12 && (d[0] & 0xC0) == 0x80 && !(d[1] >= 192 && d[1] <= 223);
    if (rtp) {
        if (t->media[(size_t)slot * 128 + (d[1] & 0x7F)]) {
            if (t->n_recs == t->cap_recs) {
                t->dropped++;
                return;
            }
            tyc_rec *r = &t->recs[t->n_recs++];
            r->at = stamp(h);
            r->ts = (uint32_t)d[4] << 24 | (uint32_t)d[5] << 16 | (uint32_t)d[6] << 8 | d[7];
            r->seq = (uint16_t)(d[2] << 8 | d[3]);
            r->size = (uint16_t)len;
            r->slot = slot;
            t->counted[slot]++;
        } else {
            t->rtx[slot]++;
        }
        return;
    }
    if (t->n_others == t->cap_others) {
        t->dropped++;
        return;
    }
    tyc_other *o = &t->others[(t->head + t->n_others++) % t->cap_others];
    o->slot = slot;
    o->len = (uint16_t)len;
    o->addrlen = h->msg_namelen <= sizeof(o->addr) ? h->msg_namelen : sizeof(o->addr);
    memcpy(o->addr, h->msg_name, o->addrlen);
    memcpy(o->data, d, len);
    *wake = 1;
}

static void drain(struct tyc *t, int fd, int32_t slot) {
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            t->iov[i].iov_base = t->bufs[i];
            t->iov[i].iov_len = DGRAM;
            memset(&t->msgs[i].msg_hdr, 0, sizeof(struct msghdr));
            t->msgs[i].msg_hdr.msg_name = &t->addrs[i];
            t->msgs[i].msg_hdr.msg_namelen = sizeof(t->addrs[i]);
            t->msgs[i].msg_hdr.msg_iov = &t->iov[i];
            t->msgs[i].msg_hdr.msg_iovlen = 1;
            t->msgs[i].msg_hdr.msg_control = t->ctrl[i];
            t->msgs[i].msg_hdr.msg_controllen = sizeof(t->ctrl[i]);
        }
        int n = recvmmsg(fd, t->msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            return; /* EAGAIN, or the socket went away: epoll drops a closed one */
        int wake = 0;
        pthread_mutex_lock(&t->mu);
        for (int i = 0; i < n; i++)
            take_datagram(t, slot, t->bufs[i], t->msgs[i].msg_len, &t->msgs[i].msg_hdr, &wake);
        pthread_mutex_unlock(&t->mu);
        if (wake) {
            uint64_t one = 1;
            ssize_t w = write(t->wake_fd, &one, sizeof(one));
            (void)w; /* a full eventfd counter still wakes the reader */
        }
        if (n < BATCH)
            return;
    }
}

static void *run(void *arg) {
    struct tyc *t = arg;
    struct epoll_event evs[64];
    if (t->nice) /* this thread only: Linux applies a nice value per thread id */
        setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), t->nice);
    if (t->idle) { /* a nice-19 thread still preempts a busy server now and then; this does not */
        struct sched_param none = {0};
        int got = sched_setscheduler(0, SCHED_IDLE, &none) == 0 ? 1 : -1;
        pthread_mutex_lock(&t->mu);
        t->idle_got = got;
        pthread_mutex_unlock(&t->mu);
    }
    struct timespec pause = {.tv_sec = t->pause_us / 1000000,
                             .tv_nsec = (long)(t->pause_us % 1000000) * 1000};
    for (;;) {
        int n = epoll_wait(t->epfd, evs, 64, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return NULL;
        for (int i = 0; i < n; i++) {
            uint64_t key = evs[i].data.u64;
            if (key == STOP_KEY)
                return NULL;
            drain(t, (int)(key >> 32), (int32_t)(key & 0xFFFFFFFF));
        }
        if (t->pause_us)
            nanosleep(&pause, NULL);
    }
}

tyc *tyc_new(int32_t slots, size_t records, size_t others, int wake_fd, int pause_us,
             int nice, int idle) {
    struct tyc *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->epfd = t->stop_fd = -1;
    pthread_mutex_init(&t->mu, NULL);
    t->slots = slots;
    t->wake_fd = wake_fd;
    t->pause_us = pause_us;
    t->nice = nice;
    t->idle = idle;
    t->cap_recs = records;
    t->cap_others = others;
    t->recs = calloc(records, sizeof(tyc_rec));
    t->others = calloc(others, sizeof(tyc_other));
    t->media = calloc((size_t)slots, 128);
    t->rtx = calloc((size_t)slots, sizeof(uint64_t));
    t->counted = calloc((size_t)slots, sizeof(uint64_t));
    t->epfd = epoll_create1(EPOLL_CLOEXEC);
    t->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (!t->recs || !t->others || !t->media || !t->rtx || !t->counted || t->epfd < 0 ||
        t->stop_fd < 0) {
        tyc_free(t);
        return NULL;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = STOP_KEY};
    if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->stop_fd, &ev) < 0 ||
        pthread_create(&t->thread, NULL, run, t) != 0) {
        tyc_free(t);
        return NULL;
    }
    t->running = 1;
    return t;
}

int tyc_watch(tyc *t, int fd, int32_t slot) {
    if (slot < 0 || slot >= t->slots)
        return -EINVAL;
    int on = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on)) < 0)
        return -errno;
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u64 = (uint64_t)(uint32_t)fd << 32 | (uint32_t)slot;
    return epoll_ctl(t->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int tyc_unwatch(tyc *t, int fd) {
    return epoll_ctl(t->epfd, EPOLL_CTL_DEL, fd, NULL) < 0 ? -errno : 0;
}

void tyc_media(tyc *t, int32_t slot, int pt) {
    if (slot >= 0 && slot < t->slots && pt >= 0 && pt < 128)
        t->media[(size_t)slot * 128 + pt] = 1; /* a byte store: the thread reads it as is */
}

size_t tyc_take(tyc *t, tyc_rec *out, size_t max) {
    pthread_mutex_lock(&t->mu);
    size_t n = t->n_recs < max ? t->n_recs : max;
    memcpy(out, t->recs, n * sizeof(tyc_rec));
    memmove(t->recs, t->recs + n, (t->n_recs - n) * sizeof(tyc_rec));
    t->n_recs -= n;
    pthread_mutex_unlock(&t->mu);
    return n;
}

int tyc_next_other(tyc *t, tyc_other *out) {
    pthread_mutex_lock(&t->mu);
    int got = t->n_others > 0;
    if (got) {
        *out = t->others[t->head];
        t->head = (t->head + 1) % t->cap_others;
        t->n_others--;
    }
    pthread_mutex_unlock(&t->mu);
    return got;
}

static uint64_t per_slot(tyc *t, const uint64_t *counts, int32_t slot) {
    pthread_mutex_lock(&t->mu);
    uint64_t n = slot >= 0 && slot < t->slots ? counts[slot] : 0;
    pthread_mutex_unlock(&t->mu);
    return n;
}

uint64_t tyc_rtx(tyc *t, int32_t slot) { return per_slot(t, t->rtx, slot); }

uint64_t tyc_counted(tyc *t, int32_t slot) { return per_slot(t, t->counted, slot); }

int tyc_idle(tyc *t) {
    pthread_mutex_lock(&t->mu);
    int got = t->idle_got;
    pthread_mutex_unlock(&t->mu);
    return got;
}

uint64_t tyc_dropped(tyc *t) {
    pthread_mutex_lock(&t->mu);
    uint64_t n = t->dropped;
    pthread_mutex_unlock(&t->mu);
    return n;
}

void tyc_free(tyc *t) {
    if (!t)
        return;
    if (t->running) {
        uint64_t one = 1;
        ssize_t w = write(t->stop_fd, &one, sizeof(one));
        (void)w;
        pthread_join(t->thread, NULL);
    }
    if (t->epfd >= 0)
        close(t->epfd);
    if (t->stop_fd >= 0)
        close(t->stop_fd);
    pthread_mutex_destroy(&t->mu);
    free(t->recs);
    free(t->others);
    free(t->media);
    free(t->rtx);
    free(t->counted);
    free(t);
}
