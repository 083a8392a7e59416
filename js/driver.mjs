// Drives the unmodified phoenix npm client for the Python tests: JSON commands on stdin,
// one per line; JSON events on stdout, one per line. Every object is named by the test.
import {Socket, Presence} from "phoenix";
import WebSocket from "ws";
import readline from "node:readline";

const sockets = new Map();
const channels = new Map();
const emit = (ev) => process.stdout.write(JSON.stringify(ev) + "\n");

const commands = {
  connect({socket: name, url, params, authToken, frames, heartbeatIntervalMs}) {
    const opts = {transport: WebSocket, params: params || {}, heartbeatIntervalMs: heartbeatIntervalMs || 30000,
                  reconnectAfterMs: () => 100, rejoinAfterMs: () => 300};
    if (authToken) opts.authToken = authToken;
    const socket = new Socket(url, opts);
    socket.onOpen(() => emit({ev: "open", socket: name}));
    socket.onClose((e) => emit({ev: "close", socket: name, code: e && e.code}));
    socket.onError(() => emit({ev: "error", socket: name}));
    if (frames) socket.onMessage((m) => emit({ev: "frame", socket: name, msg: m}));
    socket.connect();
    sockets.set(name, socket);
  },
  join({socket: name, chan, topic, params, presence, events}) {
    const channel = sockets.get(name).channel(topic, params || {});
    channels.set(chan, channel);
    channel.onError((reason) => emit({ev: "chan_error", chan, reason}));
    channel.onClose(() => emit({ev: "chan_close", chan}));
    for (const event of events || []) {
      channel.on(event, (payload) => emit({ev: "msg", chan, event,
        payload: payload instanceof ArrayBuffer ? {binary: Array.from(new Uint8Array(payload))} : payload}));
    }
    if (presence) {
      const p = new Presence(channel);
      p.onSync(() => emit({ev: "sync", chan, state: Object.fromEntries(p.list((key, pres) => [key, pres.metas]))}));
    }
    channel.join()
      .receive("ok", (response) => emit({ev: "join_ok", chan, response}))
      .receive("error", (response) => emit({ev: "join_error", chan, response}))
      .receive("timeout", () => emit({ev: "join_timeout", chan}));
  },
  push({chan, event, payload, id, binary}) {
    const body = binary ? new Uint8Array(binary).buffer : payload;
    channels.get(chan).push(event, body)
      .receive("ok", (response) => emit({ev: "reply", id, status: "ok", response: encode(response)}))
      .receive("error", (response) => emit({ev: "reply", id, status: "error", response: encode(response)}))
      .receive("timeout", () => emit({ev: "reply", id, status: "timeout"}));
  },
  leave({chan}) {
    channels.get(chan).leave().receive("ok", () => emit({ev: "left", chan}));
  },
  disconnect({socket: name}) {
    sockets.get(name).disconnect(() => emit({ev: "disconnected", socket: name}));
  },
  exit() {
    for (const socket of sockets.values()) socket.disconnect();
    setTimeout(() => process.exit(0), 50);
  },
};

function encode(value) {
  return value instanceof ArrayBuffer ? {binary: Array.from(new Uint8Array(value))} : value;
}

readline.createInterface({input: process.stdin}).on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  try {
    commands[cmd.cmd](cmd);
  } catch (err) {
    emit({ev: "driver_error", cmd: cmd.cmd, error: String(err && err.stack || err)});
  }
});
process.stdin.on("end", () => process.exit(0));
emit({ev: "ready"});
