/* One received RTP packet -> every subscriber's SRTP packet, in one call from Python.
 *
 * Per copy: write the subscriber's RTP header (its SSRC, sequence number, timestamp, payload
 * type, and an RFC 8285 one-byte extension block with its MID and abs-send-time or audio
 * level) in front of the payload, protect it with the subscriber's libsrtp session (the very
 * session aiortc's DTLS transport holds, called through the srtp_protect that pylibsrtp links)
 * and send it on the subscriber's ICE socket. Consecutive copies on one socket share a
 * sendmmsg. Python decides what to send for the copies it forwards itself; a copy on its steady
 * stream (the lane) is decided here, by RtpMunger's and Vp8Munger's rules (trackyard.sfu.fanout
 * keeps the pure-Python reference that must produce the same bytes).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "fanout.h"

#define TY_MAX_BATCH 64

static uint32_t write_extensions(uint8_t *p, const ty_copy *c, const ty_packet *pk) {
    uint8_t body[24];
    uint32_t n = 0;
    if (c->mid_len) {
        memcpy(body, c->mid, c->mid_len);
        n = c->mid_len;
    }
    if (pk->video) {
        if (c->abs_id) {
            body[n++] = c->abs_id;
            body[n++] = (uint8_t)(pk->abs_time >> 16);
            body[n++] = (uint8_t)(pk->abs_time >> 8);
            body[n++] = (uint8_t)(pk->abs_time);
        }
    } else if (c->level_id && pk->level >= 0) {
        body[n++] = c->level_id;
        body[n++] = (uint8_t)pk->level;
    }
    if (n == 0)
        return 0;
    uint32_t words = (n + 3) / 4;
    p[0] = 0xbe;
    p[1] = 0xde;
    p[2] = (uint8_t)(words >> 8);
    p[3] = (uint8_t)words;
    memcpy(p + 4, body, n);
    memset(p + 4 + n, 0, words * 4 - n);
    return 4 + words * 4;
}

/* Header and body into out; returns the RTP length (before SRTP) or -EMSGSIZE. */
static int write_rtp(const ty_copy *c, const ty_packet *pk, const uint8_t *body,
                     uint32_t body_len, uint8_t *out, uint32_t out_cap, uint32_t *body_at) {
    if (12u + 4u + 24u + body_len + TY_SRTP_TRAILER > out_cap)
        return -EMSGSIZE;
    uint32_t ext = write_extensions(out + 12, c, pk);
    out[0] = ext ? 0x90 : 0x80;
    out[1] = (uint8_t)((pk->marker ? 0x80 : 0x00) | (c->pt & 0x7f));
    out[2] = (uint8_t)(c->seq >> 8);
    out[3] = (uint8_t)(c->seq);
    out[4] = (uint8_t)(c->ts >> 24);
    out[5] = (uint8_t)(c->ts >> 16);
    out[6] = (uint8_t)(c->ts >> 8);
    out[7] = (uint8_t)(c->ts);
    out[8] = (uint8_t)(c->ssrc >> 24);
    out[9] = (uint8_t)(c->ssrc >> 16);
    out[10] = (uint8_t)(c->ssrc >> 8);
    out[11] = (uint8_t)(c->ssrc);
    memcpy(out + 12 + ext, body, body_len);
    *body_at = 12 + ext;
    return (int)(12 + ext + body_len);
}

static int protect_rtp(const ty_copy *c, uint8_t *out, int len, ty_protect_fn protect) {
    if (c->srtp != NULL && protect != NULL && protect(c->srtp, out, &len) != 0)
        return -EINVAL;
    return len;
}

int ty_build(const ty_copy *c, const ty_packet *pk, uint8_t *out, uint32_t out_cap,
             ty_protect_fn protect) {
    const uint8_t *body = c->payload ? c->payload : pk->payload;
    uint32_t body_len = c->payload ? c->payload_len : pk->payload_len;
    uint32_t at;
    int len = write_rtp(c, pk, body, body_len, out, out_cap, &at);
    return len < 0 ? len : protect_rtp(c, out, len, protect);
}

/* --- the lane: RtpMunger.map and Vp8Munger.rewrite for a copy on its steady stream ------- */

#define LANE_SEND 1
#define LANE_IGNORE 0
#define LANE_DEFER (-1)

static int newer(int32_t a, int32_t b, int32_t modulus) {
    int32_t diff = (a - b) % modulus;
    if (diff < 0)
        diff += modulus;
    return 0 < diff && diff < modulus / 2;
}

static int32_t wrap(int32_t v, int32_t modulus) {
    v %= modulus;
    return v < 0 ? v + modulus : v;
}

/* Decide one lane copy's packet: its (seq, ts, pt) into c, or ignore / defer to Python. */
static int lane_map(ty_copy *c, const ty_packet *pk) {
    if (pk->ssrc != c->src_ssrc)  /* another stream: its own layer's, unless ours restarted */
        return pk->layer == c->layer ? LANE_DEFER : LANE_IGNORE;
    if (pk->pt != c->in_pt)
        return LANE_DEFER;
    int64_t hi = c->hi;
    uint16_t diff = (uint16_t)(pk->seq - (uint16_t)hi);
    int64_t ext = diff < 0x8000 ? hi + diff : hi + diff - 0x10000;
    if (ext < c->seg_start)
        return LANE_IGNORE;
    if (ext > hi)
        c->hi = ext;
    else if (ext <= c->late_floor)
        return LANE_DEFER;  /* older than a skip point: Python keeps the skip list */
    int64_t out_ext = ext - c->seq_off;
    uint32_t out_ts = pk->ts - c->ts_offset;
    if (out_ext > c->last_out_ext) {
        c->last_out_ext = out_ext;
        c->last_out_ts = out_ts;
    }
    c->seq = (uint16_t)out_ext;
    c->ts = out_ts;
    c->pt = c->out_pt;
    return LANE_SEND;
}

/* The VP8 descriptor values this copy sends (Vp8Munger.rewrite), written into body. */
static void lane_vp8(ty_copy *c, const ty_packet *pk, uint8_t *body, ty_hist *h) {
    if (pk->pid >= 0) {
        int32_t modulus = pk->pid_wide ? 0x8000 : 0x80;
        int32_t out = wrap(pk->pid - c->pid_off, modulus);
        if (c->last_pid < 0 || newer(out, wrap(c->last_pid, modulus), modulus))
            c->last_pid = out;
        if (out != pk->pid) {
            if (pk->pid_wide) {
                body[pk->pid_at] = (uint8_t)(0x80 | (out >> 8));
                body[pk->pid_at + 1] = (uint8_t)out;
            } else {
                body[pk->pid_at] = (uint8_t)out;
            }
        }
        if (h) {
            h->pid = out;
            h->pid_at = pk->pid_at;
            h->pid_wide = pk->pid_wide;
        }
    } else if (h) {
        h->pid = -1;
    }
    if (pk->tl0 >= 0) {
        int32_t out = (pk->tl0 - c->tl0_off) & 0xff;
        if (c->last_tl0 < 0 || newer(out, c->last_tl0, 0x100))
            c->last_tl0 = out;
        body[pk->tl0_at] = (uint8_t)out;
        if (h) {
            h->tl0 = (int16_t)out;
            h->tl0_at = pk->tl0_at;
        }
    } else if (h) {
        h->tl0 = -1;
    }
    if (pk->keyidx >= 0) {
        int32_t out = (pk->keyidx - c->keyidx_off) & 0x1f;
        if (c->last_keyidx < 0 || newer(out, c->last_keyidx, 0x20))
            c->last_keyidx = out;
        body[pk->keyidx_at] = (uint8_t)((body[pk->keyidx_at] & 0xe0) | out);
        if (h) {
            h->keyidx = (int16_t)out;
            h->keyidx_at = pk->keyidx_at;
        }
    } else if (h) {
        h->keyidx = -1;
    }
}

/* One lane copy of pk into out: decided, rewritten, recorded, protected. */
static int lane_build(ty_copy *c, ty_packet *pk, uint8_t *out, uint32_t out_cap,
                      ty_protect_fn protect, int *verdict) {
    *verdict = lane_map(c, pk);
    if (*verdict != LANE_SEND)
        return -1;
    uint32_t at;
    int len = write_rtp(c, pk, pk->payload, pk->payload_len, out, out_cap, &at);
    if (len < 0)
        return len;
    ty_hist *h = c->hist ? &c->hist[c->seq & c->hist_mask] : NULL;
    lane_vp8(c, pk, out + at, h);
    if (h) {
        h->at = pk->arrival;
        h->ts = c->ts;
        h->src = pk->n;
        h->seq = c->seq;
        h->ptm = (uint8_t)(c->pt | (pk->marker ? 0x80 : 0));
    }
    c->last_sent = pk->arrival;
    c->packets++;
    c->bytes += pk->payload_len;
    if (c->credit < TY_CREDITS) {
        pk->lane_packets[c->credit]++;
        pk->lane_bytes[c->credit] += pk->payload_len;
    }
    return protect_rtp(c, out, len, protect);
}

static int flush(int fd, struct mmsghdr *msgs, int count) {
    int done = 0;
    while (done < count) {
        int r = sendmmsg(fd, msgs + done, (unsigned)(count - done), MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (r < 0 && done < count) {
                /* the first message failed (EAGAIN: socket buffer full, or an ICMP error
                 * surfaced): count it lost, as on the wire, and go on with the rest */
                done++;
                continue;
            }
        }
        done += r;
    }
    return done;
}

int ty_fanout(ty_packet *pk, ty_copy *const *copies, int n, ty_copy *const *lane, int n_lane,
              int32_t *deferred, int32_t *n_deferred, uint8_t *scratch, uint32_t slot,
              ty_protect_fn protect) {
    struct mmsghdr msgs[TY_MAX_BATCH];
    struct iovec iov[TY_MAX_BATCH];
    int built = 0, queued = 0, fd = -1, defers = 0;
    memset(pk->lane_packets, 0, sizeof(pk->lane_packets));
    memset(pk->lane_bytes, 0, sizeof(pk->lane_bytes));
    for (int i = 0; i < n + n_lane; i++) {
        ty_copy *c = i < n ? copies[i] : lane[i - n];
        if (i >= n && (int32_t)(pk->n - c->lane_from) < 0)
            continue;  /* joined the lane during this packet's Python fan-out */
        uint8_t *out = scratch + (size_t)(queued) * slot;
        if (queued && (c->fd != fd || queued == TY_MAX_BATCH)) {
            flush(fd, msgs, queued);
            queued = 0;
            out = scratch;
        }
        int len;
        if (i < n) {
            len = ty_build(c, pk, out, slot, protect);
        } else {
            int verdict;
            len = lane_build(c, pk, out, slot, protect, &verdict);
            if (verdict == LANE_DEFER)
                deferred[defers++] = i - n;
        }
        if (len < 0 || c->fd < 0)
            continue;
        built++;
        fd = c->fd;
        iov[queued].iov_base = out;
        iov[queued].iov_len = (size_t)len;
        memset(&msgs[queued], 0, sizeof(msgs[queued]));
        msgs[queued].msg_hdr.msg_name = (void *)c->addr;
        msgs[queued].msg_hdr.msg_namelen = c->addrlen;
        msgs[queued].msg_hdr.msg_iov = &iov[queued];
        msgs[queued].msg_hdr.msg_iovlen = 1;
        queued++;
    }
    if (queued)
        flush(fd, msgs, queued);
    *n_deferred = defers;
    return built;
}
