/* The C side of trackyard.sfu.fanout; fanout.py gives cffi the same declarations. */
#include <stdint.h>

#define TY_SRTP_TRAILER 148 /* SRTP_MAX_TRAILER_LEN of libsrtp 2 */

typedef int (*ty_protect_fn)(void *ctx, void *rtp, int *len);

/* What every copy of one received packet shares. */
typedef struct ty_packet {
    const uint8_t *payload;
    uint32_t payload_len;
    uint32_t abs_time;  /* 24-bit abs-send-time (video) */
    int32_t level;      /* audio level byte (V bit | -dBov), -1: none (video or unknown) */
    uint8_t marker;
    uint8_t video;
} ty_packet;

/* One subscriber's copy: set when its sender starts, seq/ts (and payload) per packet. */
typedef struct ty_copy {
    void *srtp;          /* the subscriber's srtp_t; NULL: no protection */
    int32_t fd;          /* its ICE socket */
    uint32_t addrlen;
    uint8_t addr[128];   /* struct sockaddr_* of the ICE pair's remote end */
    uint32_t ssrc;
    uint32_t ts;
    uint16_t seq;
    uint8_t pt;
    uint8_t mid_len;     /* bytes in mid: the MID element incl. its id/len byte; 0: none */
    uint8_t mid[17];
    uint8_t abs_id;      /* id << 4 | 2 (abs-send-time element header), 0: not negotiated */
    uint8_t level_id;    /* id << 4 (audio level element header, len 1), 0: not negotiated */
    const uint8_t *payload; /* NULL: the packet's payload (else a rewritten one, e.g. VP8) */
    uint32_t payload_len;
} ty_copy;

int ty_build(const ty_copy *c, const ty_packet *p, uint8_t *out, uint32_t out_cap,
             ty_protect_fn protect);
int ty_fanout(const ty_packet *p, ty_copy *const *copies, int n, uint8_t *scratch,
              uint32_t slot, ty_protect_fn protect);
