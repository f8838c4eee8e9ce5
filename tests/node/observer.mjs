// A watching client on the official LiveKit Node SDK, driven by tests/e2e/test_node_sdk.py.
// Usage: node observer.mjs URL TOKEN PEER_IDENTITY
// Prints one JSON object per line: the peer's kind, active speakers, connection quality,
// the peer's audio energy as decoded here, track unpublications, server-initiated RPC calls.
// Exits 0 when the peer sends data on topic "end"; every wait is bounded (TOTAL_MS, exit 2).
import {
  AudioStream,
  ConnectionQuality,
  ParticipantKind,
  Room,
  RoomEvent,
  TrackKind,
  dispose,
} from '@livekit/rtc-node';

const [url, token, peer] = process.argv.slice(2);
const TOTAL_MS = 40_000;
const emit = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));

const killer = setTimeout(() => {
  emit('error', { message: `gave up after ${TOTAL_MS} ms` });
  process.exit(2);
}, TOTAL_MS);

let finish;
const ended = new Promise((resolve) => (finish = resolve));
const room = new Room();

room.on(RoomEvent.ParticipantConnected, (p) =>
  emit('participant', { identity: p.identity, kind: ParticipantKind[p.kind] }),
);
room.on(RoomEvent.ActiveSpeakersChanged, (speakers) =>
  emit('speakers', { identities: speakers.map((p) => p.identity) }),
);
room.on(RoomEvent.ConnectionQualityChanged, (quality, p) =>
  emit('quality', { identity: p.identity, quality: ConnectionQuality[quality] }),
);
room.on(RoomEvent.TrackUnpublished, (pub, p) =>
  emit('track_unpublished', { identity: p.identity, sid: pub.sid }),
);
room.on(RoomEvent.TrackSubscribed, async (track, pub, p) => {
  if (track.kind !== TrackKind.KIND_AUDIO) return;
  // mean absolute sample value over ~0.5 s of decoded audio
  let sum = 0;
  let count = 0;
  let frames = 0;
  for await (const frame of new AudioStream(track)) {
    for (const s of frame.data) sum += Math.abs(s);
    count += frame.data.length;
    if (++frames >= 50) break;
  }
  emit('audio_energy', { identity: p.identity, sid: pub.sid, mean_abs: count ? sum / count : 0 });
});
room.on(RoomEvent.DataReceived, (payload, p, kind, topic) => {
  if (topic === 'end') finish();
});

let status = 0;
try {
  await room.connect(url, token, { autoSubscribe: true, dynacast: false });
  room.localParticipant.registerRpcMethod('node.echo', async (data) => {
    emit('rpc_invoked', { caller: data.callerIdentity, payload: data.payload });
    return `node echoes: ${data.payload}`;
  });
  for (const p of room.remoteParticipants.values()) {
    emit('participant', { identity: p.identity, kind: ParticipantKind[p.kind] });
  }
  emit('connected', { identity: room.localParticipant.identity, peer });
  await ended;
  emit('done');
} catch (err) {
  emit('error', { message: String(err?.message ?? err) });
  status = 1;
}
try {
  await Promise.race([room.disconnect(), new Promise((r) => setTimeout(r, 3000))]);
  await Promise.race([dispose(), new Promise((r) => setTimeout(r, 2000))]);
} catch (err) {
  emit('error', { message: `cleanup: ${err?.message ?? err}` });
}
clearTimeout(killer);
process.exit(status);
