// A streamed command's output read from the wire contract alone (docs/wire-contract.md,
// section 17): Node.js, no package, the NATS text protocol over a socket.
//
//   node tests/js/read_stream.mjs nats://127.0.0.1:4222 agt.out.writer.w1.m-1 [after_seq]
//   node tests/js/read_stream.mjs nats://127.0.0.1:4222 --send writer w1 tell '{"intro":3}' [command_id]
//
// The first form reads the subject from the message after `after_seq` (0: from the start) to
// its end; the second sends a durable command with `Agt-Stream: 1` first (the command id is
// its last argument, or made up) and reads its output. Each chunk is printed as a JSON line as
// it comes, a reset as {"reset": {...}}; then {"chunks": [...]} (resets applied) and
// {"end": <the reply>}. Exit status 0 when the reply says ok, 1 otherwise.
import net from "node:net";
import crypto from "node:crypto";

function ctoken(commandId) {
  // the command id when it is a plain token, else h + the first 32 hex digits of its SHA-256
  if (/^[A-Za-z0-9_-]{1,128}$/.test(commandId)) return commandId;
  return "h" + crypto.createHash("sha256").update(commandId, "utf8").digest("hex").slice(0, 32);
}

class Nats {
  constructor(url) {
    const u = new URL(url);
    this.sock = net.connect(Number(u.port || 4222), u.hostname);
    this.buf = Buffer.alloc(0);
    // INBOX_PREFIX: the user's own inbox prefix (_INBOX.client with the shipped accounts)
    this.inbox = `${process.env.INBOX_PREFIX || "_INBOX"}.js${crypto.randomBytes(8).toString("hex")}`;
    this.waiting = new Map(); // reply token -> resolve
    this.next = 1;
    this.ready = new Promise((resolve, reject) => {
      this.onInfo = resolve;
      this.sock.on("error", reject);
    });
    this.sock.on("data", (d) => this.feed(d));
  }

  feed(data) {
    this.buf = Buffer.concat([this.buf, data]);
    for (;;) {
      const eol = this.buf.indexOf("\r\n");
      if (eol < 0) return;
      const line = this.buf.subarray(0, eol).toString();
      const [op, ...args] = line.split(" ");
      if (op === "INFO") {
        this.buf = this.buf.subarray(eol + 2);
        const connect = { verbose: false, pedantic: false, headers: true, no_responders: true, lang: "node-raw", version: "1" };
        this.write(`CONNECT ${JSON.stringify(connect)}\r\nSUB ${this.inbox}.* 1\r\nPING\r\n`);
        this.onInfo();
      } else if (op === "PING") {
        this.buf = this.buf.subarray(eol + 2);
        this.write("PONG\r\n");
      } else if (op === "MSG" || op === "HMSG") {
        // MSG <subject> <sid> [reply] <size>; HMSG <subject> <sid> [reply] <hdr size> <size>
        const total = Number(args[args.length - 1]);
        const hdrLen = op === "HMSG" ? Number(args[args.length - 2]) : 0;
        if (this.buf.length < eol + 2 + total + 2) return; // the rest has not arrived yet
        const body = this.buf.subarray(eol + 2, eol + 2 + total);
        this.buf = this.buf.subarray(eol + 2 + total + 2);
        this.deliver(args[0], parseHeaders(body.subarray(0, hdrLen).toString()), body.subarray(hdrLen));
      } else {
        if (op === "-ERR") console.error(line);
        this.buf = this.buf.subarray(eol + 2); // +OK, PONG
      }
    }
  }

  deliver(subject, headers, data) {
    const resolve = this.waiting.get(subject);
    if (resolve) {
      this.waiting.delete(subject);
      resolve({ headers, data });
    }
  }

  write(s) {
    this.sock.write(s);
  }

  request(subject, payload, headers = null, timeoutMs = 5000) {
    const reply = `${this.inbox}.${this.next++}`;
    const body = Buffer.from(payload);
    if (headers) {
      const block = "NATS/1.0\r\n" + Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("") + "\r\n";
      const h = Buffer.from(block);
      this.sock.write(`HPUB ${subject} ${reply} ${h.length} ${h.length + body.length}\r\n`);
      this.sock.write(Buffer.concat([h, body, Buffer.from("\r\n")]));
    } else {
      this.sock.write(`PUB ${subject} ${reply} ${body.length}\r\n`);
      this.sock.write(Buffer.concat([body, Buffer.from("\r\n")]));
    }
    return new Promise((resolve, reject) => {
      this.waiting.set(reply, resolve);
      setTimeout(() => {
        if (this.waiting.delete(reply)) reject(new Error(`no answer to ${subject}`));
      }, timeoutMs);
    });
  }

  close() {
    this.sock.end();
  }
}

function parseHeaders(block) {
  // "NATS/1.0 404 Message Not Found\r\nKey: value\r\n..." -> {Status: "404", Key: "value"}
  const out = {};
  if (!block) return out;
  const lines = block.split("\r\n");
  const status = lines[0].split(" ")[1];
  if (status) out.Status = status;
  for (const line of lines.slice(1)) {
    const i = line.indexOf(":");
    if (i > 0) out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const argv = process.argv.slice(2);
  const nc = new Nats(argv[0]);
  await nc.ready;
  let subject;
  let after = 0;
  if (argv[1] === "--send") {
    const [, , type, id, action, params, given] = argv;
    const commandId = given || "js-" + crypto.randomBytes(6).toString("hex");
    subject = `agt.out.${type}.${id}.${ctoken(commandId)}`;
    const headers = { "Agt-Command-Id": commandId, "Nats-Msg-Id": commandId, "Agt-Stream": "1" };
    const ack = await nc.request(`agt.cmd.${type}.${id}`, JSON.stringify({ action, params: JSON.parse(params || "{}") }), headers);
    console.error(`sent ${commandId}: ${ack.data.toString()}`);
  } else {
    subject = argv[1];
    after = Number(argv[2] || 0);
  }
  const chunks = [];
  let wait = 20;
  for (;;) {
    const msg = await nc.request("$JS.API.DIRECT.GET.AGT_OUT", JSON.stringify({ seq: after + 1, next_by_subj: subject }));
    if (msg.headers.Status === "404") {
      await sleep(wait); // nothing stored after `after` yet: ask again, less often
      wait = Math.min(wait * 2, 1000);
      continue;
    }
    if (msg.headers.Status) throw new Error(`direct get: status ${msg.headers.Status}`);
    wait = 20;
    after = Number(msg.headers["Nats-Sequence"]);
    const kind = msg.headers["Agt-Stream-Kind"];
    const body = JSON.parse(msg.data.toString());
    if (kind === "chunk") {
      for (const c of body) console.log(JSON.stringify(c));
      chunks.length = Math.min(chunks.length, Number(msg.headers["Agt-Chunk"]));
      chunks.push(...body);
    } else if (kind === "reset") {
      console.log(JSON.stringify({ reset: body }));
      chunks.length = Math.min(chunks.length, body.from_chunk);
    } else if (kind === "end") {
      console.log(JSON.stringify({ chunks }));
      console.log(JSON.stringify({ end: body, offset: after }));
      nc.close();
      process.exit(body.ok ? 0 : 1);
    }
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(2);
});
