/* The C side of trackyard.sfu.fanout; fanout.py gives cffi the same declarations. */
#include <stdint.h>

#define TY_SRTP_TRAILER 148 /* SRTP_MAX_TRAILER_LEN of libsrtp 2 */
#define TY_CREDITS 4        /* counters objects one fan-out's lane copies may credit */

typedef int (*ty_protect_fn)(void *ctx, void *rtp, int *len);

/* What every copy of one received packet shares. The lane's fields describe the source
 * packet (its stream, numbers and VP8 descriptor, parsed once in Python). */
typedef struct ty_packet {
    const uint8_t *payload;
    uint32_t payload_len;
    uint32_t abs_time;  /* 24-bit abs-send-time (video) */
    int32_t level;      /* audio level byte (V bit | -dBov), -1: none (video or unknown) */
    uint8_t marker;
    uint8_t video;
    /* the lane */
    uint8_t pt;
    uint8_t pid_wide;   /* 15-bit picture id */
    uint32_t ssrc;
    uint32_t ts;
    uint16_t seq;
    int16_t layer;
    int32_t pid;        /* VP8 picture id, -1: absent (or not VP8) */
    int32_t tl0;        /* VP8 TL0PICIDX, -1: absent */
    int32_t keyidx;     /* VP8 KEYIDX, -1: absent */
    uint16_t pid_at, tl0_at, keyidx_at; /* their offsets in the payload */
    uint32_t n;         /* this packet's number in the source (its slot in the payload ring) */
    double arrival;
    /* out: what the lane sent for this packet, per counters object the copies credit */
    uint32_t lane_packets[TY_CREDITS];
    uint64_t lane_bytes[TY_CREDITS];
} ty_packet;

/* One packet a lane copy sent, for NACKs: the source packet and what was rewritten. */
typedef struct ty_hist {
    double at;          /* arrival of the source packet; 0: empty */
    uint32_t ts;
    uint32_t src;       /* ty_packet.n of the source packet */
    uint16_t seq;
    uint8_t ptm;        /* payload type | marker << 7 */
    uint8_t pid_wide;
    int32_t pid;        /* values written (-1: field absent) */
    int16_t tl0;
    int16_t keyidx;
    uint16_t pid_at, tl0_at, keyidx_at;
} ty_hist;

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
    /* The lane: while a copy forwards one stream steadily, C decides and rewrites its packets
     * itself (RtpMunger + Vp8Munger's steady state); Python pushes this state in and pulls it
     * back out when anything else must happen. */
    uint32_t lane_from;  /* ty_packet.n from which the lane handles this copy */
    uint32_t src_ssrc;
    int16_t layer;
    uint8_t in_pt, out_pt;
    uint8_t credit;      /* which ty_packet.lane_* slot counts its packets; >= TY_CREDITS: none */
    int64_t hi, seg_start, seq_off, late_floor, last_out_ext;
    uint32_t ts_offset, last_out_ts;
    int32_t pid_off, tl0_off, keyidx_off, last_pid, last_tl0, last_keyidx;
    double last_sent;
    uint64_t packets, bytes;
    ty_hist *hist;       /* NULL: no history */
    uint32_t hist_mask;
} ty_copy;

int ty_build(const ty_copy *c, const ty_packet *p, uint8_t *out, uint32_t out_cap,
             ty_protect_fn protect);
int ty_fanout(ty_packet *p, ty_copy *const *copies, int n, ty_copy *const *lane, int n_lane,
              int32_t *deferred, int32_t *n_deferred, uint8_t *scratch, uint32_t slot,
              ty_protect_fn protect);
