// A small client on the official LiveKit Node SDK (@livekit/rtc-node), driven by
// tests/e2e/test_node_sdk.py. Usage: node client.mjs URL TOKEN PEER_IDENTITY
// It prints one JSON object per line for everything that happens, and exits 0 when the whole
// script ran: see the peer, receive its data ("to-node"), send data back ("to-py"), call the
// peer's RPC "py.echo", answer the peer's call to "node.echo", see the peer's metadata change.
// Every wait is bounded; the whole run is cut off after TOTAL_MS (exit 2).
import { Room, RoomEvent, dispose } from '@livekit/rtc-node';

const [url, token, peer] = process.argv.slice(2);
const STEP_MS = 10_000;
const TOTAL_MS = 25_000;

const emit = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));
const dec = new TextDecoder();
const enc = new TextEncoder();

const killer = setTimeout(() => {
  emit('error', { message: `gave up after ${TOTAL_MS} ms` });
  process.exit(2);
}, TOTAL_MS);

function waitFor(what, register) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timeout waiting for ${what}`)), STEP_MS);
    register((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

const room = new Room();
let answeredRpc;
const rpcAnswered = new Promise((resolve) => (answeredRpc = resolve));
let gotData;
const dataFromPeer = new Promise((resolve) => (gotData = resolve));
let gotMetadata;
const metadataChanged = new Promise((resolve) => (gotMetadata = resolve));

room.on(RoomEvent.DataReceived, (payload, participant, kind, topic) => {
  const text = dec.decode(payload);
  emit('data_received', { from: participant?.identity, topic, text });
  if (topic === 'to-node') gotData(text);
});
room.on(RoomEvent.ParticipantMetadataChanged, (oldMetadata, participant) => {
  emit('metadata_changed', { identity: participant.identity, metadata: participant.metadata });
  if (participant.identity === peer) gotMetadata(participant.metadata);
});
room.on(RoomEvent.Disconnected, (reason) => emit('disconnected', { reason }));

let status = 0;
try {
  await room.connect(url, token, { autoSubscribe: true, dynacast: false });
  room.localParticipant.registerRpcMethod('node.echo', async (data) => {
    emit('rpc_invoked', { method: 'node.echo', caller: data.callerIdentity, payload: data.payload });
    answeredRpc(data.payload);
    return `node echoes: ${data.payload}`;
  });
  emit('connected', { identity: room.localParticipant.identity, room: room.name });

  const seen = await waitFor(`participant ${peer}`, (done) => {
    const check = () => {
      const p = [...room.remoteParticipants.values()].find((r) => r.identity === peer);
      if (p) done(p);
    };
    room.on(RoomEvent.ParticipantConnected, check);
    check();
  });
  emit('participant', { identity: seen.identity, sid: seen.sid });

  await waitFor('data from peer', (done) => dataFromPeer.then(done));
  await room.localParticipant.publishData(enc.encode('hello from node'), {
    reliable: true,
    topic: 'to-py',
  });
  emit('data_sent', { topic: 'to-py' });

  const response = await room.localParticipant.performRpc({
    destinationIdentity: peer,
    method: 'py.echo',
    payload: 'ping from node',
    responseTimeout: STEP_MS,
  });
  emit('rpc_result', { method: 'py.echo', response });

  await waitFor('rpc call from peer', (done) => rpcAnswered.then(done));
  await waitFor('metadata change of peer', (done) => metadataChanged.then(done));
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
