/* rtpcount.c's interface (also the cffi declarations of trackyard.loadtest.rtpcount). */
#include <stddef.h>
#include <stdint.h>

typedef struct tyc_rec {
    double at; /* kernel receive time, CLOCK_REALTIME seconds */
    uint32_t ts;
    uint16_t seq;
    uint16_t size;
    int32_t slot;
} tyc_rec;

typedef struct tyc_other { /* a datagram for the connection's own protocol */
    int32_t slot;
    uint16_t len;
    uint32_t addrlen;
    uint8_t addr[128];
    uint8_t data[2048];
} tyc_other;

typedef struct tyc tyc;

tyc *tyc_new(int32_t slots, size_t records, size_t others, int wake_fd, int pause_us,
             int nice, int idle);
int tyc_idle(tyc *t); /* 1: the thread runs as SCHED_IDLE, -1: refused, 0: not asked (yet) */
int tyc_watch(tyc *t, int fd, int32_t slot);
int tyc_unwatch(tyc *t, int fd);
void tyc_media(tyc *t, int32_t slot, int pt);
size_t tyc_take(tyc *t, tyc_rec *out, size_t max);
int tyc_next_other(tyc *t, tyc_other *out);
uint64_t tyc_rtx(tyc *t, int32_t slot);
uint64_t tyc_counted(tyc *t, int32_t slot);
uint64_t tyc_dropped(tyc *t);
void tyc_free(tyc *t);
