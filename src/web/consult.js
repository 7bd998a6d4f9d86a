// The teleconsultation page: sign in, check devices, wait to be admitted, then one
// RTCPeerConnection to yba, which relays the others' media (docs/signaling.md).
// No build step and no library: the browser's own WebRTC, fetch and WebSocket.
'use strict';

(() => {
  // ---------------------------------------------------------------- labels (vi, en)
  const LABELS = {
    vi: {
      title: 'Khám từ xa',
      loading: 'Đang tải…',
      consultation: 'Ca khám {id}',
      'signin.title': 'Đăng nhập',
      'signin.username': 'Tên đăng nhập',
      'signin.password': 'Mật khẩu',
      'signin.submit': 'Đăng nhập',
      'signin.failed': 'Đăng nhập không thành công: tên đăng nhập hoặc mật khẩu không đúng.',
      'signin.expired': 'Phiên đăng nhập đã hết hạn, vui lòng đăng nhập lại.',
      signout: 'Đăng xuất',
      'check.title': 'Kiểm tra thiết bị',
      'check.camera': 'Camera',
      'check.microphone': 'Micrô',
      'check.speaker': 'Loa',
      'check.speakerTest': 'Phát âm thử',
      'check.server': 'Máy chủ',
      'check.ice': 'Kết nối media (ICE)',
      'check.again': 'Kiểm tra lại',
      'check.join': 'Vào phòng khám',
      'check.pending': 'đang kiểm tra…',
      'check.ok': 'tốt',
      'check.none': 'không có',
      'check.denied': 'bị chặn (hãy cho phép trong trình duyệt)',
      'check.silent': 'chưa nghe thấy âm thanh',
      'check.heard': 'nghe thấy âm thanh',
      'check.played': 'đã phát âm thử — bạn có nghe thấy không?',
      'check.untested': 'bấm “Phát âm thử”',
      'check.serverOk': 'kết nối được ({ms} ms)',
      'check.serverFail': 'không kết nối được',
      'check.forbidden': 'bạn không được vào ca khám này',
      'check.closed': 'phòng khám chưa mở hoặc đã đóng',
      'check.iceOk': 'tốt ({kinds})',
      'check.iceFail': 'không tìm được đường kết nối',
      'check.turnMissing': 'không dùng được máy chủ TURN: cuộc gọi có thể không kết nối qua mạng này',
      'waiting.title': 'Phòng chờ',
      'waiting.text': 'Bác sĩ sẽ cho bạn vào sớm. Vui lòng giữ trang này mở.',
      'call.you': 'Bạn',
      'call.alone': 'Chưa có ai khác trong cuộc gọi.',
      'call.mute': 'Tắt micrô',
      'call.unmute': 'Bật micrô',
      'call.cameraOff': 'Tắt camera',
      'call.cameraOn': 'Bật camera',
      'call.audioOnly': 'Chỉ âm thanh',
      'call.hangup': 'Rời cuộc gọi',
      'call.end': 'Kết thúc cuộc gọi',
      'call.waitingList': 'Đang chờ vào',
      'call.nobodyWaiting': 'Không có ai đang chờ.',
      'call.admit': 'Cho vào',
      'call.micOff': 'micrô tắt',
      'call.camOff': 'camera tắt',
      'call.mutedBy': 'Bác sĩ đã tắt micrô của bạn.',
      'call.reconnecting': 'Mất kết nối, đang kết nối lại…',
      'call.left': '{who} đã rời cuộc gọi.',
      'role.moderator': 'bác sĩ',
      'role.publisher': 'người tham gia',
      'role.subscriber': 'người quan sát',
      'quality.good': 'Kết nối tốt',
      'quality.fair': 'Kết nối trung bình',
      'quality.poor': 'Kết nối kém',
      'quality.detail': 'RTT {rtt} ms · mất gói {loss}% · jitter {jitter} ms',
      'link.audioOnly': 'Đường truyền yếu: tạm dừng video, vẫn giữ âm thanh.',
      'link.lowVideo': 'Đường truyền yếu: video chất lượng thấp.',
      'ended.title': 'Cuộc gọi đã kết thúc',
      'ended.byDoctor': 'Bác sĩ đã kết thúc cuộc gọi.',
      'ended.removed': 'Bác sĩ đã mời bạn ra khỏi cuộc gọi.',
      'ended.left': 'Bạn đã rời cuộc gọi.',
      'ended.lost': 'Mất kết nối với cuộc gọi.',
      'error.unauthorized': 'Mã vào phòng không hợp lệ hoặc đã hết hạn.',
      'error.forbidden': 'Bạn không được phép làm việc này.',
      'error.not-admitted': 'Bác sĩ chưa cho bạn vào.',
      'error.room-full': 'Phòng khám đã đủ người.',
      'error.closed': 'Cuộc gọi đã đóng.',
      'error.replaced': 'Bạn đã vào cuộc gọi này từ một cửa sổ khác.',
      'error.negotiation-failed': 'Không thiết lập được kết nối media.',
      'error.generic': 'Lỗi: {message}',
      'error.media': 'Không mở được camera hoặc micrô: {message}',
      'error.network': 'Không liên lạc được với máy chủ.',
      lang: 'English',
    },
    en: {
      title: 'Teleconsultation',
      loading: 'Loading…',
      consultation: 'Consultation {id}',
      'signin.title': 'Sign in',
      'signin.username': 'Username',
      'signin.password': 'Password',
      'signin.submit': 'Sign in',
      'signin.failed': 'Sign-in failed: wrong username or password.',
      'signin.expired': 'Your session has expired: please sign in again.',
      signout: 'Sign out',
      'check.title': 'Device check',
      'check.camera': 'Camera',
      'check.microphone': 'Microphone',
      'check.speaker': 'Speaker',
      'check.speakerTest': 'Play a test sound',
      'check.server': 'Server',
      'check.ice': 'Media connection (ICE)',
      'check.again': 'Check again',
      'check.join': 'Join the consultation',
      'check.pending': 'checking…',
      'check.ok': 'good',
      'check.none': 'none',
      'check.denied': 'blocked (allow it in the browser)',
      'check.silent': 'no sound heard yet',
      'check.heard': 'sound heard',
      'check.played': 'test sound played — did you hear it?',
      'check.untested': 'press “Play a test sound”',
      'check.serverOk': 'reachable ({ms} ms)',
      'check.serverFail': 'unreachable',
      'check.forbidden': 'you may not join this consultation',
      'check.closed': 'the consultation room is not open or already closed',
      'check.iceOk': 'good ({kinds})',
      'check.iceFail': 'no route for media found',
      'check.turnMissing': 'the TURN server is not usable: the call may not connect from this network',
      'waiting.title': 'Waiting room',
      'waiting.text': 'The doctor will let you in shortly. Please keep this page open.',
      'call.you': 'You',
      'call.alone': 'Nobody else is in the call yet.',
      'call.mute': 'Mute microphone',
      'call.unmute': 'Unmute microphone',
      'call.cameraOff': 'Camera off',
      'call.cameraOn': 'Camera on',
      'call.audioOnly': 'Audio only',
      'call.hangup': 'Leave the call',
      'call.end': 'End the call',
      'call.waitingList': 'Waiting to join',
      'call.nobodyWaiting': 'Nobody is waiting.',
      'call.admit': 'Admit',
      'call.micOff': 'mic off',
      'call.camOff': 'camera off',
      'call.mutedBy': 'The doctor muted your microphone.',
      'call.reconnecting': 'Connection lost, reconnecting…',
      'call.left': '{who} left the call.',
      'role.moderator': 'doctor',
      'role.publisher': 'participant',
      'role.subscriber': 'observer',
      'quality.good': 'Good connection',
      'quality.fair': 'Fair connection',
      'quality.poor': 'Poor connection',
      'quality.detail': 'RTT {rtt} ms · loss {loss}% · jitter {jitter} ms',
      'link.audioOnly': 'Weak connection: video paused, audio kept.',
      'link.lowVideo': 'Weak connection: lower video quality.',
      'ended.title': 'The call has ended',
      'ended.byDoctor': 'The doctor ended the call.',
      'ended.removed': 'The doctor removed you from the call.',
      'ended.left': 'You left the call.',
      'ended.lost': 'The connection to the call was lost.',
      'error.unauthorized': 'The join token is invalid or has expired.',
      'error.forbidden': 'You are not allowed to do this.',
      'error.not-admitted': 'The doctor has not admitted you yet.',
      'error.room-full': 'The consultation room is full.',
      'error.closed': 'The call is closed.',
      'error.replaced': 'You joined this call from another window.',
      'error.negotiation-failed': 'The media connection could not be set up.',
      'error.generic': 'Error: {message}',
      'error.media': 'Cannot open the camera or microphone: {message}',
      'error.network': 'Cannot reach the server.',
      lang: 'Tiếng Việt',
    },
  };

  const $ = (id) => document.getElementById(id);
  const store = window.sessionStorage;
  const consultationId = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '');
  const PING_EVERY_MS = 10000;
  const STATS_EVERY_MS = 2000;
  const JOIN_TOKEN_FRESH_MS = 90000; // join tokens live two minutes
  const RESUME_FOR_MS = 25000; // the server keeps our place for its grace period (30 s)

  // Everything the page knows, readable by tests as window.yba.state.
  const state = {
    phase: 'loading', // loading | signin | check | joining | waiting | call | ended
    lang: store.getItem('yba.lang') === 'en' ? 'en' : 'vi',
    consultation: consultationId,
    participant: null,
    stream: null,
    role: null,
    admitted: false,
    participants: {}, // reference -> {participant, stream, role, audioMuted, videoMuted}
    waiting: {}, // reference -> {participant, role}
    check: { camera: 'pending', mic: 'pending', micPeak: 0, speaker: 'untested', server: 'pending', ice: 'pending', iceKinds: [] },
    muted: { audio: false, video: false },
    audioOnly: false,
    quality: null,
    pongs: 0,
    errors: [],
    videoQuality: 'high',
    ended: null,
    resumes: 0,
    answered: 0, // the server's offers answered (tracks coming and going, ICE restarts)
    videoSentOff: false,
  };

  let accessToken = store.getItem('yba.token');
  let join = null; // {token, role, participant, signal, at}
  let localStream = null;
  let pc = null;
  let videoSender = null; // our camera's sender, null while we send no video
  let ws = null;
  let pendingCandidates = [];
  let audioCtx = null;
  let meterTimer = null;
  let pingTimer = null;
  let statsTimer = null;
  let lastInbound = null;
  let leaving = false;
  let inbox = Promise.resolve();
  let lostSince = null;
  const remoteStreams = new Map(); // stream id -> MediaStream

  // ---------------------------------------------------------------- text
  function t(key, args) {
    const table = LABELS[state.lang];
    let s = table[key] ?? LABELS.vi[key] ?? key;
    for (const [k, v] of Object.entries(args || {})) s = s.replaceAll(`{${k}}`, String(v));
    return s;
  }

  function applyLabels() {
    document.documentElement.lang = state.lang;
    for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
    document.title = `Yba — ${t('title')}`;
    $('lang-btn').textContent = t('lang');
    $('consultation').textContent = t('consultation', { id: consultationId });
    renderChecks();
    renderControls();
    renderTiles();
    renderWaiting();
    renderQuality();
    if (state.ended) $('ended-reason').textContent = t(state.ended);
  }

  function setLang(lang) {
    state.lang = lang === 'en' ? 'en' : 'vi';
    store.setItem('yba.lang', state.lang);
    applyLabels();
  }

  function showError(text) {
    state.errors.push(text);
    const el = $('error');
    el.textContent = text;
    el.hidden = false;
  }

  function clearError() {
    $('error').hidden = true;
  }

  function notice(text) {
    const el = $('notice');
    el.textContent = text || '';
    el.hidden = !text;
  }

  function show(phase) {
    state.phase = phase;
    for (const s of ['loading', 'signin', 'check', 'waiting', 'call', 'ended']) {
      $(`screen-${s}`).hidden = s !== (phase === 'joining' ? 'check' : phase);
    }
  }

  // ---------------------------------------------------------------- sign-in
  async function signIn(ev) {
    ev.preventDefault();
    clearError();
    const body = new URLSearchParams({
      grant_type: 'password',
      username: $('username').value.trim(),
      password: $('password').value,
    });
    $('signin-btn').disabled = true;
    try {
      const r = await fetch('/auth/token', {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
        body,
      });
      if (!r.ok) {
        showError(t('signin.failed'));
        return;
      }
      const tok = await r.json();
      accessToken = tok.access_token;
      store.setItem('yba.token', accessToken);
      $('password').value = '';
      startCheck();
    } catch (e) {
      showError(t('error.network'));
    } finally {
      $('signin-btn').disabled = false;
    }
  }

  function signOut() {
    accessToken = null;
    join = null;
    store.removeItem('yba.token');
    stopLocal();
    show('signin');
  }

  function expired() {
    accessToken = null;
    store.removeItem('yba.token');
    stopLocal();
    show('signin');
    showError(t('signin.expired'));
  }

  // ---------------------------------------------------------------- the join token
  // POST /api/consultations/{id}/join: the answer says whether we may enter at all.
  async function fetchJoin() {
    const r = await fetch(`/api/consultations/${encodeURIComponent(consultationId)}/join`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${accessToken}`, Accept: 'application/json' },
    });
    if (r.status === 401) {
      expired();
      return null;
    }
    if (!r.ok) {
      let detail = '';
      try {
        detail = (await r.json()).issue?.[0]?.diagnostics || '';
      } catch (_) {
        // an answer without a body says enough by its status
      }
      return { refused: r.status, detail };
    }
    const j = await r.json();
    join = { ...j, at: Date.now() };
    return join;
  }

  async function freshJoin() {
    if (join && Date.now() - join.at < JOIN_TOKEN_FRESH_MS) return join;
    return fetchJoin();
  }

  // ---------------------------------------------------------------- device check
  function setCheck(name, value) {
    state.check[name] = value;
    renderChecks();
  }

  function renderChecks() {
    const c = state.check;
    const view = {
      'check-camera': [c.camera, c.camera === 'ok' ? t('check.ok') : c.camera === 'pending' ? t('check.pending') : c.camera === 'denied' ? t('check.denied') : t('check.none')],
      'check-mic': [c.mic === 'ok' ? (c.micPeak > 0.01 ? 'ok' : 'warn') : c.mic, c.mic === 'ok' ? (c.micPeak > 0.01 ? t('check.heard') : t('check.silent')) : c.mic === 'pending' ? t('check.pending') : c.mic === 'denied' ? t('check.denied') : t('check.none')],
      'check-speaker': [c.speaker === 'played' ? 'ok' : 'warn', c.speaker === 'played' ? t('check.played') : t('check.untested')],
      'check-server': [c.server === 'ok' ? 'ok' : c.server === 'pending' ? 'pending' : 'fail', c.server === 'ok' ? t('check.serverOk', { ms: c.serverMs }) : c.server === 'pending' ? t('check.pending') : c.server === 'forbidden' ? t('check.forbidden') : c.server === 'closed' ? t('check.closed') : t('check.serverFail')],
      'check-ice': [c.ice, c.ice === 'ok' ? t('check.iceOk', { kinds: c.iceKinds.join(', ') }) : c.ice === 'pending' ? t('check.pending') : t('check.iceFail')],
    };
    for (const [id, [s, text]] of Object.entries(view)) {
      const el = $(id);
      el.dataset.state = s;
      el.textContent = text;
    }
    $('join-btn').disabled = !(c.server === 'ok' && c.ice !== 'pending' && c.camera !== 'pending' && c.mic !== 'pending');
  }

  async function startCheck() {
    show('check');
    clearError();
    Object.assign(state.check, { camera: 'pending', mic: 'pending', micPeak: 0, server: 'pending', ice: 'pending', iceKinds: [] });
    renderChecks();
    await Promise.all([checkDevices(), checkServer(), checkIce([])]);
  }

  async function checkDevices() {
    stopLocal();
    const wants = state.role === 'subscriber' ? [] : ['audio', 'video'];
    try {
      localStream = await navigator.mediaDevices.getUserMedia({
        audio: true,
        video: { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 15 } },
      });
    } catch (e) {
      // Try each device alone: a station without a camera still consults by voice.
      localStream = new MediaStream();
      for (const kind of wants) {
        try {
          const s = await navigator.mediaDevices.getUserMedia({ [kind]: true });
          s.getTracks().forEach((tr) => localStream.addTrack(tr));
        } catch (e2) {
          setCheck(kind === 'audio' ? 'mic' : 'camera', e2.name === 'NotAllowedError' ? 'denied' : 'none');
        }
      }
      if (!localStream.getTracks().length) showError(t('error.media', { message: e.message }));
    }
    if (localStream.getVideoTracks().length) setCheck('camera', 'ok');
    else if (state.check.camera === 'pending') setCheck('camera', 'none');
    $('check-preview').srcObject = localStream;
    $('local-video').srcObject = localStream;
    if (localStream.getAudioTracks().length) {
      setCheck('mic', 'ok');
      meter(localStream);
    } else if (state.check.mic === 'pending') setCheck('mic', 'none');
  }

  function context() {
    if (!audioCtx) audioCtx = new AudioContext();
    if (audioCtx.state === 'suspended') audioCtx.resume().catch(() => {});
    return audioCtx;
  }

  // The microphone's level, from the analyser's time-domain samples (RMS).
  function meter(stream) {
    const ctx = context();
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 1024;
    ctx.createMediaStreamSource(stream).connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    clearInterval(meterTimer);
    meterTimer = setInterval(() => {
      analyser.getFloatTimeDomainData(buf);
      let sum = 0;
      for (const x of buf) sum += x * x;
      const level = Math.min(1, Math.sqrt(sum / buf.length) * 4);
      $('mic-level').value = level;
      if (level > state.check.micPeak) {
        const was = state.check.micPeak > 0.01;
        state.check.micPeak = level;
        if (!was && level > 0.01) renderChecks();
      }
    }, 100);
  }

  // A short two-tone chime through the default output.
  function speakerTest() {
    const ctx = context();
    const now = ctx.currentTime;
    const gain = ctx.createGain();
    gain.gain.setValueAtTime(0.2, now);
    gain.gain.exponentialRampToValueAtTime(0.001, now + 0.8);
    gain.connect(ctx.destination);
    for (const [f, at] of [[660, 0], [880, 0.25]]) {
      const osc = ctx.createOscillator();
      osc.frequency.value = f;
      osc.connect(gain);
      osc.start(now + at);
      osc.stop(now + at + 0.5);
    }
    setCheck('speaker', 'played');
  }

  // The server answers, and lets us in: /healthz for reachability, then the join token.
  async function checkServer() {
    const started = performance.now();
    try {
      const r = await fetch('/healthz', { cache: 'no-store' });
      if (!r.ok) throw new Error(String(r.status));
      state.check.serverMs = Math.round(performance.now() - started);
      const j = await fetchJoin();
      if (!j) return;
      if (j.refused) {
        setCheck('server', j.refused === 403 ? 'forbidden' : j.refused === 409 ? 'closed' : 'fail');
        if (j.detail) showError(j.detail);
        return;
      }
      state.role = j.role;
      setCheck('server', 'ok');
    } catch (e) {
      setCheck('server', 'fail');
    }
  }

  // ICE gathers candidates here: host ones always, server-reflexive and relayed ones when
  // STUN and TURN servers are given (those of `joined`, checked again once we have them).
  function checkIce(iceServers) {
    return new Promise((resolve) => {
      const probe = new RTCPeerConnection({ iceServers });
      const kinds = new Set();
      const done = () => {
        clearTimeout(timer);
        probe.close();
        resolve([...kinds]);
      };
      const timer = setTimeout(done, 5000);
      probe.onicecandidate = (e) => {
        if (!e.candidate) return done();
        const m = / typ (\w+)/.exec(e.candidate.candidate);
        if (m) kinds.add(m[1]);
      };
      probe.createDataChannel('probe');
      probe.createOffer().then((o) => probe.setLocalDescription(o)).catch(done);
    }).then((kinds) => {
      if (!iceServers.length) {
        state.check.iceKinds = kinds;
        setCheck('ice', kinds.length ? 'ok' : 'fail');
      }
      return kinds;
    });
  }

  async function checkTurn(iceServers) {
    const turn = iceServers.some((s) => [].concat(s.urls || []).some((u) => u.startsWith('turn')));
    if (!turn) return;
    const kinds = await checkIce(iceServers);
    state.iceRelay = kinds.includes('relay');
    if (!state.iceRelay) notice(t('check.turnMissing'));
  }

  function stopLocal() {
    clearInterval(meterTimer);
    if (localStream) localStream.getTracks().forEach((tr) => tr.stop());
    localStream = null;
  }

  // ---------------------------------------------------------------- signaling
  function send(msg) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
  }

  async function enter() {
    clearError();
    state.phase = 'joining';
    $('join-btn').disabled = true;
    const j = await freshJoin();
    if (!j) return;
    if (j.refused) {
      showError(j.detail || t('check.closed'));
      $('join-btn').disabled = false;
      return;
    }
    openSocket(j);
  }

  function openSocket(j) {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(`${proto}//${location.host}${j.signal}`);
    ws = socket;
    window.yba.ws = socket;
    socket.onopen = () => socket.send(JSON.stringify({ type: 'join', token: j.token }));
    socket.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      // One message at a time, in order: an answer and the offer right behind it must not
      // interleave on the peer connection.
      inbox = inbox
        .then(() => handle(msg))
        .catch((e) => showError(t('error.generic', { message: e.message })));
    };
    socket.onclose = (ev) => {
      if (ws !== socket) return;
      clearInterval(pingTimer);
      closed(ev.code);
    };
    clearInterval(pingTimer);
    pingTimer = setInterval(() => send({ type: 'ping' }), PING_EVERY_MS);
  }

  // A socket that closed without an end: a refusal is final; anything else is resumed
  // within the server's grace period, on a fresh join token, keeping the peer connection.
  function closed(code) {
    // Signed out meanwhile (the access token expired): the sign-in screen stays.
    if (leaving || state.phase === 'ended' || state.phase === 'signin') return;
    if (code === 4001 || code === 4003 || code === 4009) {
      finish(code === 4003 ? 'ended.removed' : 'ended.lost');
      return;
    }
    if (!lostSince) lostSince = Date.now();
    if (Date.now() - lostSince > RESUME_FOR_MS) {
      finish('ended.lost');
      return;
    }
    notice(t('call.reconnecting'));
    setTimeout(async () => {
      join = null;
      const j = await fetchJoin().catch(() => null);
      if (j && !j.refused) openSocket(j);
      else closed(0);
    }, 1500);
  }

  async function handle(msg) {
    switch (msg.type) {
      case 'joined':
        return joined(msg);
      case 'admitted':
        state.admitted = true;
        return startCall();
      case 'participant-waiting':
        state.waiting[msg.participant] = { participant: msg.participant, role: msg.role };
        return renderWaiting();
      case 'participant-joined':
        delete state.waiting[msg.participant];
        state.participants[msg.participant] = {
          participant: msg.participant, stream: msg.stream, role: msg.role, audioMuted: false, videoMuted: false,
        };
        renderWaiting();
        return renderTiles();
      case 'participant-left':
        return participantLeft(msg);
      case 'offer':
        return answerOffer(msg.sdp);
      case 'answer':
        if (pc) await pc.setRemoteDescription(msg.sdp);
        return flushCandidates();
      case 'candidate':
        return candidate(msg.candidate);
      case 'muted':
        return mutedEvent(msg);
      case 'ended':
        return finish('ended.byDoctor', msg.reason);
      case 'removed':
        return finish('ended.removed');
      case 'pong':
        state.pongs += 1;
        return undefined;
      case 'quality':
        return videoQuality(msg);
      case 'error':
        return refused(msg);
      default:
        return undefined;
    }
  }

  async function joined(msg) {
    notice('');
    lostSince = null;
    Object.assign(state, { participant: msg.participant, stream: msg.stream, role: msg.role, admitted: msg.admitted });
    for (const p of msg.participants || []) {
      if (p.admitted === false) {
        state.waiting[p.participant] = { participant: p.participant, role: p.role };
      } else {
        state.participants[p.participant] = { ...p };
      }
    }
    state.iceServers = msg.iceServers || [];
    $('moderator').hidden = state.role !== 'moderator';
    $('end-btn').hidden = state.role !== 'moderator';
    renderWaiting();
    checkTurn(state.iceServers);
    if (msg.resumed && pc) {
      // The server keeps our connection and offers an ICE restart: answer it, as any offer.
      state.resumes += 1;
      return;
    }
    if (pc) resetPeer();
    if (state.admitted) await startCall();
    else show('waiting');
  }

  function refused(msg) {
    const key = `error.${msg.code}`;
    if (msg.code === 'replaced') {
      // Another window of ours took over: resuming here would take it back, and so on.
      finish('ended.lost');
    }
    showError(LABELS.vi[key] ? t(key) : t('error.generic', { message: msg.message || msg.code }));
  }

  // ---------------------------------------------------------------- media
  async function startCall() {
    show('call');
    if (!localStream && state.role !== 'subscriber') await checkDevices();
    $('local-video').srcObject = localStream;
    pc = new RTCPeerConnection({ iceServers: state.iceServers || [], bundlePolicy: 'max-bundle' });
    window.yba.pc = pc;
    pc.onicecandidate = (e) => {
      if (e.candidate && e.candidate.candidate) send({ type: 'candidate', candidate: e.candidate.toJSON() });
    };
    pc.ontrack = (e) => remoteTrack(e);
    pc.onconnectionstatechange = () => {
      state.connection = pc.connectionState;
    };
    const audio = localStream?.getAudioTracks()[0];
    const video = localStream?.getVideoTracks()[0];
    const sending = state.role !== 'subscriber';
    videoSender = null;
    for (const [kind, track] of [['audio', audio], ['video', video]]) {
      if (sending && track) {
        const tr = pc.addTransceiver(track, { direction: 'sendonly', streams: [localStream] });
        if (kind === 'video') videoSender = tr.sender;
      } else pc.addTransceiver(kind, { direction: 'recvonly' });
    }
    if (audio) audio.enabled = !state.muted.audio;
    if (state.muted.audio) send({ type: 'mute', kind: 'audio', muted: true });
    if (state.muted.video || state.audioOnly) await applyVideoSending();
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    send({ type: 'offer', sdp: pc.localDescription });
    clearInterval(statsTimer);
    statsTimer = setInterval(() => sampleQuality().catch(() => {}), STATS_EVERY_MS);
    renderControls();
    renderTiles();
  }

  async function answerOffer(sdp) {
    if (!pc) return;
    await pc.setRemoteDescription(sdp);
    await pc.setLocalDescription(await pc.createAnswer());
    send({ type: 'answer', sdp: pc.localDescription });
    state.answered += 1;
    await flushCandidates();
  }

  async function candidate(c) {
    if (!pc || !pc.remoteDescription) {
      pendingCandidates.push(c);
      return;
    }
    await pc.addIceCandidate(c);
  }

  async function flushCandidates() {
    const queued = pendingCandidates;
    pendingCandidates = [];
    for (const c of queued) await pc.addIceCandidate(c).catch(() => {});
  }

  function resetPeer() {
    if (pc) pc.close();
    pc = null;
    videoSender = null;
    window.yba.pc = null;
    pendingCandidates = [];
    remoteStreams.clear();
    lastInbound = null;
  }

  // Each relayed track arrives under its publisher's stream id: one tile per stream.
  function remoteTrack(e) {
    const id = e.streams[0]?.id || `mid-${e.transceiver?.mid}`;
    let stream = remoteStreams.get(id);
    if (!stream) {
      stream = e.streams[0] || new MediaStream();
      remoteStreams.set(id, stream);
    }
    if (!stream.getTracks().includes(e.track)) stream.addTrack(e.track);
    e.track.onended = () => renderTiles();
    renderTiles();
  }

  function ownerOf(streamId) {
    return Object.values(state.participants).find((p) => p.stream === streamId) || null;
  }

  function participantLeft(msg) {
    const p = state.participants[msg.participant];
    delete state.waiting[msg.participant];
    delete state.participants[msg.participant];
    if (p) {
      remoteStreams.delete(p.stream);
      notice(t('call.left', { who: msg.participant }));
    }
    renderWaiting();
    renderTiles();
  }

  function mutedEvent(msg) {
    const key = msg.kind === 'audio' ? 'audioMuted' : 'videoMuted';
    if (msg.participant === state.participant) {
      // The doctor may mute us: the microphone really goes off here too.
      if (msg.kind === 'audio' && msg.muted && !state.muted.audio) {
        state.muted.audio = true;
        const a = localStream?.getAudioTracks()[0];
        if (a) a.enabled = false;
        if (msg.by !== state.participant) notice(t('call.mutedBy'));
      }
      renderControls();
      return;
    }
    const p = state.participants[msg.participant];
    if (p) p[key] = msg.muted;
    renderTiles();
  }

  function toggleMute() {
    state.muted.audio = !state.muted.audio;
    const a = localStream?.getAudioTracks()[0];
    if (a) a.enabled = !state.muted.audio;
    send({ type: 'mute', kind: 'audio', muted: state.muted.audio });
    renderControls();
  }

  async function toggleCamera() {
    state.muted.video = !state.muted.video;
    await applyVideoSending();
    renderControls();
  }

  // The video we receive, as the server now sends it: it sheds video when our link loses too
  // much (audio goes on) and gives it back once the link is clean.
  function videoQuality(msg) {
    state.videoQuality = msg.video;
    if (msg.limitedByLink) notice(t(msg.video === 'off' ? 'link.audioOnly' : 'link.lowVideo'));
    else if (!state.audioOnly) notice('');
  }

  async function toggleAudioOnly() {
    state.audioOnly = $('audio-only').checked;
    $('screen-call').classList.toggle('audio-only', state.audioOnly);
    send({ type: 'quality', video: state.audioOnly ? 'off' : 'high' });
    await applyVideoSending();
    renderControls();
  }

  // Our video goes out unless the camera is off or the call is audio-only. Off means the
  // camera itself is stopped (its light goes out) and the sender carries nothing; the others
  // are told with `mute`. On again opens the camera anew.
  async function applyVideoSending() {
    const off = state.muted.video || state.audioOnly;
    const sender = videoSender;
    const current = localStream?.getVideoTracks()[0];
    if (off && current) {
      if (sender) await sender.replaceTrack(null);
      current.stop();
      localStream.removeTrack(current);
    } else if (!off && !current && state.check.camera === 'ok') {
      const s = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 15 } },
      });
      const track = s.getVideoTracks()[0];
      localStream.addTrack(track);
      if (sender) await sender.replaceTrack(track);
      $('local-video').srcObject = localStream;
    }
    if (off !== state.videoSentOff) {
      state.videoSentOff = off;
      send({ type: 'mute', kind: 'video', muted: off });
    }
  }

  function admit(participant) {
    send({ type: 'admit', participant });
  }

  function hangUp() {
    leaving = true;
    send({ type: 'leave' });
    finish('ended.left');
  }

  function endCall() {
    send({ type: 'end' });
  }

  function finish(key) {
    if (state.phase === 'ended') return;
    state.ended = key;
    clearInterval(pingTimer);
    clearInterval(statsTimer);
    if (ws) {
      const s = ws;
      ws = null;
      s.close(1000);
    }
    resetPeer();
    stopLocal();
    show('ended');
    renderQuality();
    notice('');
    $('ended-reason').textContent = t(key);
  }

  // ---------------------------------------------------------------- connection quality
  // From getStats(): the selected pair's round-trip time, and loss and jitter of what we
  // receive (over the last interval). Good: < 150 ms, < 2 %, < 30 ms; poor: > 400 ms, > 8 %,
  // > 100 ms; fair in between.
  async function sampleQuality() {
    if (!pc) return;
    const stats = await pc.getStats();
    let rtt = null;
    let received = 0;
    let lost = 0;
    let jitter = 0;
    const byId = new Map();
    stats.forEach((s) => byId.set(s.id, s));
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        const pair = byId.get(s.selectedCandidatePairId);
        if (pair && pair.currentRoundTripTime !== undefined) rtt = pair.currentRoundTripTime;
      }
      if (s.type === 'inbound-rtp') {
        received += s.packetsReceived || 0;
        lost += Math.max(0, s.packetsLost || 0);
        jitter = Math.max(jitter, s.jitter || 0);
      }
    });
    if (rtt === null) {
      stats.forEach((s) => {
        if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded' && s.currentRoundTripTime !== undefined) rtt = s.currentRoundTripTime;
      });
    }
    const prev = lastInbound;
    lastInbound = { received, lost };
    const dr = prev ? received - prev.received : received;
    const dl = prev ? lost - prev.lost : lost;
    const loss = dr + dl > 0 ? (100 * dl) / (dr + dl) : 0;
    if (rtt === null && received === 0) return;
    const r = rtt ?? 0;
    let level = 'good';
    if (r > 0.4 || loss > 8 || jitter > 0.1) level = 'poor';
    else if (r > 0.15 || loss > 2 || jitter > 0.03) level = 'fair';
    state.quality = { level, rtt: rtt === null ? null : Math.round(r * 1000), loss: Math.round(loss * 10) / 10, jitter: Math.round(jitter * 1000) };
    renderQuality();
  }

  function renderQuality() {
    const el = $('quality');
    const q = state.quality;
    el.hidden = !q || state.phase !== 'call';
    if (!q) return;
    el.dataset.level = q.level;
    el.textContent = t(`quality.${q.level}`);
    el.title = t('quality.detail', { rtt: q.rtt ?? '?', loss: q.loss, jitter: q.jitter });
  }

  // ---------------------------------------------------------------- rendering
  function renderControls() {
    const mute = $('mute-btn');
    mute.textContent = state.muted.audio ? t('call.unmute') : t('call.mute');
    mute.setAttribute('aria-pressed', String(state.muted.audio));
    const cam = $('camera-btn');
    cam.textContent = state.muted.video ? t('call.cameraOn') : t('call.cameraOff');
    cam.setAttribute('aria-pressed', String(state.muted.video));
    cam.disabled = state.audioOnly;
    $('audio-only').checked = state.audioOnly;
    const sending = state.role !== 'subscriber';
    mute.hidden = !sending;
    cam.hidden = !sending;
    const flags = [];
    if (state.muted.audio) flags.push(t('call.micOff'));
    if (state.muted.video || state.audioOnly) flags.push(t('call.camOff'));
    $('local-flags').textContent = flags.length ? `· ${flags.join(' · ')}` : '';
    $('tile-local').classList.toggle('video-off', state.muted.video || state.audioOnly);
  }

  function tileId(streamId) {
    return `tile-${streamId.replace(/[^A-Za-z0-9_-]/g, '_')}`;
  }

  function renderTiles() {
    const tiles = $('tiles');
    const want = new Set();
    for (const [id, stream] of remoteStreams) {
      if (!stream.getTracks().some((tr) => tr.readyState === 'live')) continue;
      const owner = ownerOf(id);
      const tid = tileId(id);
      want.add(tid);
      let fig = $(tid);
      if (!fig) {
        fig = document.createElement('figure');
        fig.className = 'tile remote';
        fig.id = tid;
        fig.dataset.stream = id;
        const video = document.createElement('video');
        video.autoplay = true;
        video.playsInline = true;
        video.srcObject = stream;
        video.play().catch(() => {});
        fig.append(video, document.createElement('figcaption'));
        tiles.append(fig);
      }
      if (owner) fig.dataset.participant = owner.participant;
      const flags = [];
      if (owner?.audioMuted) flags.push(t('call.micOff'));
      if (owner?.videoMuted) flags.push(t('call.camOff'));
      fig.classList.toggle('video-off', !!owner?.videoMuted);
      fig.classList.toggle('audio-muted', !!owner?.audioMuted);
      const who = owner ? `${owner.participant} (${t(`role.${owner.role}`)})` : id;
      fig.querySelector('figcaption').textContent = flags.length ? `${who} · ${flags.join(' · ')}` : who;
    }
    for (const fig of tiles.querySelectorAll('.tile.remote')) {
      if (!want.has(fig.id)) fig.remove();
    }
    $('alone').hidden = want.size > 0;
  }

  function renderWaiting() {
    const list = $('waiting-list');
    list.replaceChildren();
    const entries = Object.values(state.waiting);
    for (const w of entries) {
      const li = document.createElement('li');
      const name = document.createElement('span');
      name.textContent = `${w.participant} (${t(`role.${w.role}`)})`;
      const btn = document.createElement('button');
      btn.type = 'button';
      btn.className = 'small';
      btn.dataset.admit = w.participant;
      btn.textContent = t('call.admit');
      btn.addEventListener('click', () => admit(w.participant));
      li.append(name, btn);
      list.append(li);
    }
    $('waiting-none').hidden = entries.length > 0;
  }

  // ---------------------------------------------------------------- start
  function wire() {
    $('lang-btn').addEventListener('click', () => setLang(state.lang === 'vi' ? 'en' : 'vi'));
    $('signin-form').addEventListener('submit', signIn);
    $('signout-btn').addEventListener('click', signOut);
    $('speaker-test').addEventListener('click', speakerTest);
    $('recheck-btn').addEventListener('click', startCheck);
    $('join-btn').addEventListener('click', () => enter().catch((e) => showError(t('error.generic', { message: e.message }))));
    $('mute-btn').addEventListener('click', toggleMute);
    $('camera-btn').addEventListener('click', () => toggleCamera().catch((e) => showError(t('error.media', { message: e.message }))));
    $('audio-only').addEventListener('change', () => toggleAudioOnly().catch((e) => showError(t('error.media', { message: e.message }))));
    $('hangup-btn').addEventListener('click', hangUp);
    $('leave-waiting-btn').addEventListener('click', hangUp);
    $('end-btn').addEventListener('click', endCall);
    window.addEventListener('pagehide', () => {
      if (ws && state.phase !== 'ended') send({ type: 'leave' });
    });
  }

  // For tests and the curious: the page's state, its peer connection and its socket.
  window.yba = { state, pc: null, ws: null, t, setLang, labels: LABELS };

  document.addEventListener('DOMContentLoaded', () => {
    wire();
    applyLabels();
    if (accessToken) startCheck();
    else show('signin');
  });
})();
