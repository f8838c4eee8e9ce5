// Test helpers around livekit-client (the UMD build's global LivekitClient), called by
// tests/browser/driver.mjs as window.T.<name>(...args). Everything returns plain JSON. Waits
// inside the page are bounded by the caller's timeoutMs; the test bounds every call as well.
/* global LivekitClient */
'use strict';

(() => {
  const LK = LivekitClient;
  const { Room, RoomEvent, Track } = LK;
  const enc = new TextEncoder();
  const dec = new TextDecoder();

  const T = {
    ready: true,
    sdkVersion: LK.version,
    room: null,
    events: [],
    videoSize: { width: 640, height: 360 },
  };
  window.T = T;

  const listeners = new Set();
  function record(type, fields = {}) {
    T.events.push({ seq: T.events.length, type, at: Date.now(), ...fields });
    for (const listener of [...listeners]) listener();
  }

  const sourceName = (s) => String(s ?? '');

  function elementId(identity, source) {
    return `media-${identity}-${source}`;
  }

  function attach(track, participant) {
    const source = sourceName(track.source);
    const id = elementId(participant.identity, source);
    document.getElementById(id)?.remove();
    const el = track.attach();
    el.id = id;
    if (track.kind === Track.Kind.Video) {
      el.muted = true;
      el.playsInline = true;
      el.style.width = `${T.videoSize.width}px`;
      el.style.height = `${T.videoSize.height}px`;
    }
    document.body.appendChild(el);
  }

  function remoteParticipant(identity) {
    for (const p of T.room.remoteParticipants.values()) {
      if (p.identity === identity) return p;
    }
    return null;
  }

  function remoteTrack(identity, source) {
    const p = remoteParticipant(identity);
    const pub = p?.getTrackPublication(source);
    return { participant: p, publication: pub, track: pub?.track ?? null };
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  function matches(ev, type, match) {
    if (ev.type !== type) return false;
    return Object.entries(match ?? {}).every(([k, v]) => ev[k] === v);
  }

  // Resolve with the first event of `type` whose fields include `match`, with seq >= since.
  T.waitEvent = (type, match = {}, timeoutMs = 10000, since = 0) =>
    new Promise((resolve, reject) => {
      const find = () => T.events.find((ev) => ev.seq >= since && matches(ev, type, match));
      const found = find();
      if (found) return resolve(found);
      const listener = () => {
        const ev = find();
        if (ev) {
          clearTimeout(timer);
          listeners.delete(listener);
          resolve(ev);
        }
      };
      const timer = setTimeout(() => {
        listeners.delete(listener);
        const recent = JSON.stringify(T.events.slice(-30));
        reject(new Error(`no ${type} ${JSON.stringify(match)} in ${timeoutMs} ms; events: ${recent}`));
      }, timeoutMs);
      listeners.add(listener);
    });

  T.mark = () => T.events.length;
  T.eventsOf = (type, since = 0) => T.events.filter((ev) => ev.seq >= since && ev.type === type);

  T.connect = async (url, token, options = {}) => {
    // options.connect: RoomConnectOptions (e.g. rtcConfig), the rest: RoomOptions
    const { connect: connectOptions = {}, ...roomOptions } = options;
    const room = new Room(roomOptions);
    T.room = room;
    room
      .on(RoomEvent.ParticipantConnected, (p) => record('participant_connected', { identity: p.identity, sid: p.sid }))
      .on(RoomEvent.ParticipantDisconnected, (p) => record('participant_disconnected', { identity: p.identity }))
      .on(RoomEvent.TrackPublished, (pub, p) =>
        record('track_published', { identity: p.identity, source: sourceName(pub.source), kind: pub.kind, sid: pub.trackSid, mime: pub.mimeType ?? '' }),
      )
      .on(RoomEvent.TrackUnpublished, (pub, p) =>
        record('track_unpublished', { identity: p.identity, source: sourceName(pub.source), sid: pub.trackSid }),
      )
      .on(RoomEvent.TrackSubscribed, (track, pub, p) => {
        attach(track, p);
        record('track_subscribed', { identity: p.identity, source: sourceName(pub.source), kind: track.kind, sid: pub.trackSid, mime: pub.mimeType ?? '' });
      })
      .on(RoomEvent.TrackUnsubscribed, (track, pub, p) => {
        track.detach().forEach((el) => el.remove());
        record('track_unsubscribed', { identity: p.identity, source: sourceName(pub.source), sid: pub.trackSid });
      })
      .on(RoomEvent.TrackSubscriptionFailed, (sid, p, reason) =>
        record('track_subscription_failed', { identity: p.identity, sid, reason: String(reason) }),
      )
      .on(RoomEvent.TrackMuted, (pub, p) =>
        record('track_muted', { identity: p.identity, source: sourceName(pub.source), local: p === room.localParticipant }),
      )
      .on(RoomEvent.TrackUnmuted, (pub, p) =>
        record('track_unmuted', { identity: p.identity, source: sourceName(pub.source), local: p === room.localParticipant }),
      )
      .on(RoomEvent.TrackStreamStateChanged, (pub, state, p) =>
        record('stream_state', { identity: p.identity, source: sourceName(pub.source), state: String(state) }),
      )
      .on(RoomEvent.LocalTrackPublished, (pub) =>
        record('local_track_published', { source: sourceName(pub.source), sid: pub.trackSid }),
      )
      .on(RoomEvent.LocalTrackUnpublished, (pub) =>
        record('local_track_unpublished', { source: sourceName(pub.source), sid: pub.trackSid }),
      )
      .on(RoomEvent.DataReceived, (payload, p, kind, topic) =>
        record('data', { from: p?.identity ?? null, topic: topic ?? null, kind, text: dec.decode(payload) }),
      )
      .on(RoomEvent.RoomMetadataChanged, (metadata) => record('room_metadata_changed', { metadata }))
      .on(RoomEvent.ParticipantMetadataChanged, (_prev, p) =>
        record('participant_metadata_changed', { identity: p.identity, metadata: p.metadata ?? '' }),
      )
      .on(RoomEvent.ParticipantAttributesChanged, (changed, p) =>
        record('participant_attributes_changed', { identity: p.identity, changed: { ...changed } }),
      )
      .on(RoomEvent.ActiveSpeakersChanged, (speakers) =>
        record('active_speakers', { identities: speakers.map((p) => p.identity).sort().join(',') }),
      )
      .on(RoomEvent.Disconnected, (reason) => record('disconnected', { reason: reason ?? null }))
      .on(RoomEvent.Reconnecting, () => record('reconnecting'))
      .on(RoomEvent.Reconnected, () => record('reconnected'))
      .on(RoomEvent.SignalReconnecting, () => record('signal_reconnecting'))
      .on(RoomEvent.MediaDevicesError, (err) => record('media_devices_error', { message: String(err) }));
    // which path a reconnect takes: 'resuming' (same participant) or 'restarting' (full rejoin)
    room.engine
      ?.on('resuming', () => record('engine_resuming'))
      .on('restarting', () => record('engine_restarting'))
      .on('resumed', () => record('engine_resumed'))
      .on('restarted', () => record('engine_restarted'))
      .on('signalResumed', () => record('engine_signal_resumed'));
    await room.connect(url, token, connectOptions);
    record('connected');
    return { sid: room.localParticipant.sid, identity: room.localParticipant.identity, room: room.name };
  };

  // per peer connection (publisher, subscriber): the local candidate of the selected ICE pair
  T.selectedCandidates = async () => {
    const pcm = T.room.engine.pcManager;
    const out = [];
    for (const transport of [pcm.publisher, pcm.subscriber]) {
      const stats = transport ? await transport.getStats() : undefined;
      let pair;
      stats?.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
      });
      const local = pair && stats.get(pair.localCandidateId);
      out.push(local ? { type: local.candidateType, relayProtocol: local.relayProtocol ?? null, bytes: pair.bytesSent + pair.bytesReceived } : null);
    }
    return out;
  };

  // Both peer connections as the browser holds them: states and ICE credentials (an ICE
  // restart changes the local ufrag), and the selected pair's local and remote candidates.
  T.peerConnections = async () => {
    const pcm = T.room.engine.pcManager;
    const ufrag = (sd) => /a=ice-ufrag:(\S+)/.exec(sd?.sdp ?? '')?.[1] ?? null;
    const out = {};
    for (const [name, transport] of [['publisher', pcm.publisher], ['subscriber', pcm.subscriber]]) {
      const pc = transport?._pc;
      if (!pc) {
        out[name] = null;
        continue;
      }
      const stats = await pc.getStats();
      let pair = null;
      stats.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
      });
      const cand = (id) => {
        const c = id && stats.get(id);
        return c ? `${c.address ?? c.ip}:${c.port}/${c.protocol}` : null;
      };
      out[name] = {
        connectionState: pc.connectionState,
        iceConnectionState: pc.iceConnectionState,
        signalingState: pc.signalingState,
        localUfrag: ufrag(pc.localDescription),
        remoteUfrag: ufrag(pc.remoteDescription),
        pair: pair ? { state: pair.state, local: cand(pair.localCandidateId), remote: cand(pair.remoteCandidateId) } : null,
      };
    }
    return out;
  };

  // Frame clocks: sample a remote track's framesDecoded every intervalMs and keep the
  // (wall-clock, Date.now()) times at which it grew, to measure gaps in decoded video.
  const frameClocks = new Map();
  T.startFrameClock = (identity, source, intervalMs = 40) => {
    const key = `${identity}/${source}`;
    if (frameClocks.has(key)) return true;
    const clock = { times: [], last: null, timer: null, busy: false };
    clock.timer = setInterval(async () => {
      if (clock.busy) return;
      clock.busy = true;
      try {
        const now = await T.inbound(identity, source);
        const decoded = now?.framesDecoded ?? null;
        if (decoded !== null && clock.last !== null && decoded > clock.last) clock.times.push(Date.now());
        if (decoded !== null) clock.last = decoded;
      } finally {
        clock.busy = false;
      }
    }, intervalMs);
    frameClocks.set(key, clock);
    return true;
  };

  // The longest time (ms) without a newly decoded frame from sinceMs on (counting from
  // sinceMs to the first frame), and how many samples saw frames grow since then.
  T.frameGap = (identity, source, sinceMs) => {
    const clock = frameClocks.get(`${identity}/${source}`);
    if (!clock) throw new Error(`no frame clock for ${identity}/${source}`);
    const times = [sinceMs, ...clock.times.filter((t) => t >= sinceMs)];
    let gap = 0;
    for (let i = 1; i < times.length; i += 1) gap = Math.max(gap, times[i] - times[i - 1]);
    return { maxGapMs: gap, grew: times.length - 1, lastAt: clock.times.at(-1) ?? null };
  };

  T.stopFrameClocks = () => {
    for (const clock of frameClocks.values()) clearInterval(clock.timer);
    frameClocks.clear();
    return true;
  };

  T.localSid = () => T.room.localParticipant.sid;

  T.disconnect = async () => {
    await T.room?.disconnect();
    return true;
  };

  // Room-level state as the SDK holds it (JoinResponse, then RoomUpdate): numbers are Number,
  // not the protobuf int64 BigInt, so the answer stays JSON.
  T.roomInfo = async () => {
    const room = T.room;
    const info = room.roomInfo ?? {};
    const server = room.serverInfo ?? {};
    return {
      sid: await room.getSid(),
      name: room.name,
      metadata: room.metadata ?? '',
      numParticipants: room.numParticipants,
      numPublishers: room.numPublishers,
      maxParticipants: info.maxParticipants ?? 0,
      emptyTimeout: info.emptyTimeout ?? 0,
      departureTimeout: info.departureTimeout ?? 0,
      creationTimeMs: Number(info.creationTimeMs ?? 0),
      server: { region: server.region ?? '', nodeId: server.nodeId ?? '', protocol: server.protocol ?? 0 },
    };
  };

  // A participant (remote, or the page's own by its identity) as the SDK holds it, with the
  // ParticipantInfo fields the SDK acts on (version: it drops older updates; state).
  T.participantInfo = (identity) => {
    const local = T.room.localParticipant;
    const p = identity === local.identity ? local : remoteParticipant(identity);
    if (!p) return null;
    const info = p.participantInfo ?? {};
    const perm = p.permissions;
    return {
      sid: p.sid,
      identity: p.identity,
      name: p.name ?? '',
      metadata: p.metadata ?? '',
      attributes: { ...p.attributes },
      kind: p.kind,
      state: info.state ?? null,
      version: info.version ?? null,
      joinedAtMs: Number(info.joinedAtMs ?? 0),
      permissions: perm
        ? { canSubscribe: perm.canSubscribe, canPublish: perm.canPublish, canPublishData: perm.canPublishData, hidden: perm.hidden }
        : null,
      tracks: [...p.trackPublications.values()]
        .map((pub) => ({
          sid: pub.trackSid,
          source: sourceName(pub.source),
          kind: pub.kind,
          mime: pub.mimeType ?? '',
          simulcasted: pub.simulcasted ?? null,
          width: pub.dimensions?.width ?? 0,
          height: pub.dimensions?.height ?? 0,
          layers: (pub.trackInfo?.layers ?? []).map((l) => ({ quality: l.quality, width: l.width, height: l.height })),
        }))
        .sort((a, b) => a.source.localeCompare(b.source)),
    };
  };

  T.remoteIdentities = () => [...T.room.remoteParticipants.values()].map((p) => p.identity).sort();

  // -- publishing ----------------------------------------------------------------------------

  function localPublication(source) {
    return T.room.localParticipant.getTrackPublication(source);
  }

  function describeLocal(pub) {
    if (!pub) return null;
    const track = pub.track;
    const settings = track?.mediaStreamTrack?.getSettings() ?? {};
    return {
      sid: pub.trackSid,
      source: sourceName(pub.source),
      muted: pub.isMuted,
      simulcasted: pub.simulcasted ?? null,
      mime: pub.mimeType ?? '',
      width: settings.width ?? null,
      height: settings.height ?? null,
      encodings: track?.sender?.getParameters()?.encodings?.map((e) => ({ rid: e.rid ?? null, active: e.active, scale: e.scaleResolutionDownBy ?? null })) ?? [],
    };
  }

  T.enableCameraAndMicrophone = async () => {
    await T.room.localParticipant.enableCameraAndMicrophone();
    return {
      camera: describeLocal(localPublication(Track.Source.Camera)),
      microphone: describeLocal(localPublication(Track.Source.Microphone)),
    };
  };

  T.setCameraEnabled = async (enabled) => {
    await T.room.localParticipant.setCameraEnabled(enabled);
    return describeLocal(localPublication(Track.Source.Camera));
  };

  T.localTrack = (source) => describeLocal(localPublication(source));

  // Poll until exactly the rids in `active` are the camera's active simulcast encodings.
  T.waitActiveLayers = async (active, timeoutMs = 10000) => {
    const deadline = Date.now() + timeoutMs;
    const want = [...active].sort().join(',');
    let last = null;
    while (Date.now() < deadline) {
      last = describeLocal(localPublication(Track.Source.Camera));
      const now = (last?.encodings ?? []).filter((e) => e.active).map((e) => e.rid).sort().join(',');
      if (now === want) return last;
      await sleep(100);
    }
    throw new Error(`camera layers never ${want} in ${timeoutMs} ms: ${JSON.stringify(last)}`);
  };

  T.muteCamera = async (muted) => {
    const pub = localPublication(Track.Source.Camera);
    if (muted) await pub.mute();
    else await pub.unmute();
    return describeLocal(pub);
  };

  T.unpublishCamera = async () => {
    const pub = localPublication(Track.Source.Camera);
    await T.room.localParticipant.unpublishTrack(pub.track, true);
    return pub.trackSid;
  };

  // Per-layer counters of what this page sends (outbound-rtp per rid).
  T.outboundVideo = async () => {
    const report = await localPublication(Track.Source.Camera)?.track?.getRTCStatsReport();
    const out = [];
    report?.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video') {
        out.push({ rid: s.rid ?? null, frameWidth: s.frameWidth ?? 0, frameHeight: s.frameHeight ?? 0, framesEncoded: s.framesEncoded ?? 0, packetsSent: s.packetsSent ?? 0, qualityLimitationReason: s.qualityLimitationReason ?? null });
      }
    });
    return out.sort((a, b) => String(a.rid).localeCompare(String(b.rid)));
  };

  // -- receiving -----------------------------------------------------------------------------

  // What the subscriber's receiver decoded so far (inbound-rtp), or null without a track.
  T.inbound = async (identity, source) => {
    const { publication, track } = remoteTrack(identity, source);
    if (!track) return null;
    const report = await track.getRTCStatsReport();
    let found = null;
    report?.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === track.kind) found = s;
    });
    const base = { muted: publication.isMuted, subscribed: publication.isSubscribed, streamState: String(track.streamState) };
    if (!found) return { ...base, packetsReceived: 0, framesDecoded: 0, totalAudioEnergy: 0 };
    return {
      ...base,
      packetsReceived: found.packetsReceived ?? 0,
      bytesReceived: found.bytesReceived ?? 0,
      framesDecoded: found.framesDecoded ?? 0,
      keyFramesDecoded: found.keyFramesDecoded ?? 0,
      frameWidth: found.frameWidth ?? 0,
      frameHeight: found.frameHeight ?? 0,
      framesPerSecond: found.framesPerSecond ?? 0,
      totalAudioEnergy: found.totalAudioEnergy ?? 0,
      audioLevel: found.audioLevel ?? 0,
      totalSamplesReceived: found.totalSamplesReceived ?? 0,
      codec: report.get(found.codecId)?.mimeType ?? null,
    };
  };

  // Poll inbound stats until stat[field] grew by `by` over the first reading (bounded).
  T.waitGrowth = async (identity, source, field, by, timeoutMs = 10000) => {
    const deadline = Date.now() + timeoutMs;
    let first = null;
    let last = null;
    while (Date.now() < deadline) {
      last = await T.inbound(identity, source);
      if (last && first === null) first = last;
      if (first && last[field] - first[field] >= by) return { first, last };
      await sleep(100);
    }
    throw new Error(`${identity}/${source} ${field} did not grow by ${by} in ${timeoutMs} ms: first=${JSON.stringify(first)} last=${JSON.stringify(last)}`);
  };

  // Poll until inbound stats satisfy all bounds, e.g. {frameWidth: [0, 400]} (inclusive), and
  // frames keep being decoded; returns the matching reading.
  T.waitStats = async (identity, source, bounds, timeoutMs = 10000) => {
    const deadline = Date.now() + timeoutMs;
    let last = null;
    let prev = null;
    while (Date.now() < deadline) {
      last = await T.inbound(identity, source);
      const ok =
        last &&
        Object.entries(bounds).every(([k, [lo, hi]]) => last[k] >= lo && last[k] <= hi) &&
        prev && last.framesDecoded > prev.framesDecoded;
      if (ok) return last;
      prev = last;
      await sleep(200);
    }
    throw new Error(`${identity}/${source} stats never within ${JSON.stringify(bounds)} in ${timeoutMs} ms: last=${JSON.stringify(last)}`);
  };

  // Poll until `field` stayed the same for quietMs (bounded); returns the readings.
  T.waitStill = async (identity, source, field, quietMs = 1500, timeoutMs = 10000) => {
    const deadline = Date.now() + timeoutMs;
    let since = await T.inbound(identity, source);
    let sinceAt = Date.now();
    while (Date.now() < deadline) {
      await sleep(250);
      const now = await T.inbound(identity, source);
      if (!now || !since || now[field] !== since[field]) {
        since = now;
        sinceAt = Date.now();
      } else if (Date.now() - sinceAt >= quietMs) {
        return { first: since, last: now, quietMs: Date.now() - sinceAt };
      }
    }
    throw new Error(`${identity}/${source} ${field} kept changing for ${timeoutMs} ms: ${JSON.stringify(since)}`);
  };

  // Draw the remote video element into a small canvas and describe the picture.
  T.sampleVideo = (identity, source) => {
    const el = document.getElementById(elementId(identity, source));
    if (!el || !el.videoWidth) {
      return { width: 0, height: 0, meanLuma: 0, meanRgb: [0, 0, 0], litFraction: 0, distinctColours: 0 };
    }
    const w = 64;
    const h = Math.max(1, Math.round((64 * el.videoHeight) / el.videoWidth));
    const canvas = document.createElement('canvas');
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(el, 0, 0, w, h);
    const { data } = ctx.getImageData(0, 0, w, h);
    let sum = 0;
    let lit = 0;
    const rgb = [0, 0, 0];
    const colours = new Set();
    for (let i = 0; i < data.length; i += 4) {
      const y = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
      sum += y;
      rgb[0] += data[i];
      rgb[1] += data[i + 1];
      rgb[2] += data[i + 2];
      if (y > 32) lit += 1;
      colours.add((data[i] >> 4) * 256 + (data[i + 1] >> 4) * 16 + (data[i + 2] >> 4));
    }
    const n = data.length / 4;
    return {
      width: el.videoWidth,
      height: el.videoHeight,
      meanLuma: sum / n,
      meanRgb: rgb.map((c) => c / n),
      litFraction: lit / n,
      distinctColours: colours.size,
    };
  };

  T.setVideoSize = (identity, source, width, height) => {
    const el = document.getElementById(elementId(identity, source));
    if (!el) throw new Error(`no element for ${identity}/${source}`);
    el.hidden = false;
    el.style.display = 'block';
    el.style.width = `${width}px`;
    el.style.height = `${height}px`;
    return { clientWidth: el.clientWidth, clientHeight: el.clientHeight };
  };

  T.setVideoHidden = (identity, source, hidden) => {
    const el = document.getElementById(elementId(identity, source));
    if (!el) throw new Error(`no element for ${identity}/${source}`);
    el.hidden = hidden;
    el.style.display = hidden ? 'none' : 'block';
    return { hidden: el.hidden };
  };

  T.remoteMuted = (identity, source) => remoteTrack(identity, source).publication?.isMuted ?? null;

  // -- data and RPC --------------------------------------------------------------------------

  T.publishData = async (text, options = {}) => {
    await T.room.localParticipant.publishData(enc.encode(text), options);
    return true;
  };

  T.registerRpc = (method, prefix) => {
    T.room.registerRpcMethod(method, async (data) => {
      record('rpc_invoked', { method, caller: data.callerIdentity, payload: data.payload });
      return `${prefix}: ${data.payload}`;
    });
    return true;
  };

  T.performRpc = (destinationIdentity, method, payload, responseTimeout = 10000) =>
    T.room.localParticipant.performRpc({ destinationIdentity, method, payload, responseTimeout });

  T.state = () => ({
    connection: T.room?.state ?? null,
    visibility: document.visibilityState,
    remotes: T.room ? T.remoteIdentities() : [],
  });
})();
