// A Channels load generator for bench/channels_workload.py: raw V2 frames over `ws` (no
// phoenix.js: thousands of its sockets would measure the client, not the server).
//
//   node load.mjs <ws url> <json config>
// config: {sockets, topics, concurrency, probes, watch}
//   watch false: each socket joins "load:<i % topics>" as user "u<i>" (tracked, with state);
//   watch true: each socket joins "load:big" with {watch: true} (not tracked: it only hears).
// Then `probes` times: a new socket joins topic "load:0" (or "load:big") as "probe<k>" and
// every socket of that topic times the presence_diff that names it, from the moment the
// join frame is sent (the connection is open by then).
// Prints one JSON line per phase: {phase: "joined", seconds, sockets}, then after a line
// "go" on stdin {phase: "probed", samples: [[probe, ms, ms, ...], ...]}, then exits.
import WebSocket from "ws";
import readline from "node:readline";

const [url, configText] = process.argv.slice(2);
const config = JSON.parse(configText);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const endpoint = (user) => `${url}/websocket?vsn=2.0.0&user=${user}`;

let waiting = new Map(); // probe user -> {t0, times: []}
const members = []; // sockets of the probed topic

function open(user, topic, params, onDiff, onJoinSent) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(endpoint(user), {perMessageDeflate: false});
    let state = false, replied = false;
    const wantState = !params.watch && !params.nostate;
    ws.on("open", () => {
      if (onJoinSent) onJoinSent();
      ws.send(JSON.stringify(["1", "1", topic, "phx_join", params]));
    });
    ws.on("message", (data) => {
      const text = data.toString();
      if (!replied && text.startsWith('["1","1"')) {
        replied = true;
        if (JSON.parse(text)[4].status !== "ok") reject(new Error(text));
      } else if (text.startsWith('["1",null') && text.includes('"presence_state"')) {
        state = true;
      } else if (onDiff && text.startsWith("[null,null") && text.includes('"presence_diff"')) {
        onDiff(text);
      }
      if (replied && (state || !wantState) && !ws.ready) {
        ws.ready = true;
        resolve(ws);
      }
    });
    ws.on("error", reject);
  });
}

function hear(text) {
  const now = performance.now();
  for (const [user, probe] of waiting) {
    if (text.includes(`"${user}"`) && text.includes('"joins":{"' + user)) probe.times.push(now - probe.t0);
  }
}

async function main() {
  const {sockets, topics, concurrency, probes, watch} = config;
  const t0 = performance.now();
  let next = 0;
  async function worker() {
    while (next < sockets) {
      const i = next++;
      const topic = watch ? "load:big" : `load:${i % topics}`;
      const probed = watch || i % topics === 0;
      const ws = await open(`u${i}`, topic, watch ? {watch: true} : {user: `u${i}`}, probed ? hear : null);
      if (probed) members.push(ws);
    }
  }
  await Promise.all(Array.from({length: concurrency}, worker));
  out({phase: "joined", seconds: (performance.now() - t0) / 1000, sockets, members: members.length});
  const rl = readline.createInterface({input: process.stdin});
  await new Promise((resolve) => rl.once("line", resolve));
  const samples = [];
  for (let k = 0; k < probes; k++) {
    const user = `probe${k}`;
    const probe = {t0: performance.now(), times: []};
    waiting.set(user, probe);
    const sent = () => { probe.t0 = performance.now(); };  // from the join's send
    const ws = await open(user, watch ? "load:big" : "load:0", {user, nostate: watch}, null, sent);
    const deadline = performance.now() + 10000;
    while (probe.times.length < members.length && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 2));
    }
    waiting.delete(user);
    samples.push([user, ...probe.times]);
    ws.close();
    await new Promise((r) => setTimeout(r, 50));
  }
  process.stdout.write(JSON.stringify({phase: "probed", samples}) + "\n", () => process.exit(0));
}

setTimeout(() => { out({phase: "failed", error: "took over 300 s"}); process.exit(1); }, 300000);
main().catch((err) => { out({phase: "failed", error: String(err && err.stack || err)}); process.exit(1); });
