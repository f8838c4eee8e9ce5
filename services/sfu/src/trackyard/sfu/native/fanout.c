/* One received RTP packet -> every subscriber's SRTP packet, in one call from Python.
 *
 * Per copy: write the subscriber's RTP header (its SSRC, sequence number, timestamp, payload
 * type, and an RFC 8285 one-byte extension block with its MID and abs-send-time or audio
 * level) in front of the payload, protect it with the subscriber's libsrtp session (the very
 * session aiortc's DTLS transport holds, called through the srtp_protect that pylibsrtp links)
 * and send it on the subscriber's ICE socket. Consecutive copies on one socket share a
 * sendmmsg. Python decides what to send; this only applies it (trackyard.sfu.fanout keeps the
 * pure-Python reference that must produce the same bytes).
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

int ty_build(const ty_copy *c, const ty_packet *pk, uint8_t *out, uint32_t out_cap,
             ty_protect_fn protect) {
    const uint8_t *body = c->payload ? c->payload : pk->payload;
    uint32_t body_len = c->payload ? c->payload_len : pk->payload_len;
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
    int len = (int)(12 + ext + body_len);
    if (c->srtp != NULL && protect != NULL && protect(c->srtp, out, &len) != 0)
        return -EINVAL;
    return len;
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

int ty_fanout(const ty_packet *pk, ty_copy *const *copies, int n, uint8_t *scratch,
              uint32_t slot, ty_protect_fn protect) {
    struct mmsghdr msgs[TY_MAX_BATCH];
    struct iovec iov[TY_MAX_BATCH];
    int built = 0, queued = 0, fd = -1;
    for (int i = 0; i < n; i++) {
        const ty_copy *c = copies[i];
        uint8_t *out = scratch + (size_t)(queued) * slot;
        if (queued && (c->fd != fd || queued == TY_MAX_BATCH)) {
            flush(fd, msgs, queued);
            queued = 0;
            out = scratch;
        }
        int len = ty_build(c, pk, out, slot, protect);
        if (len < 0)
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
    return built;
}
