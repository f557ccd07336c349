// Node's https server (OpenSSL linked into the node executable, on memory buffers): GET /big
// answers 5 MB, GET /chain with a DOWNSTREAM_PORT first asks that HTTPS service for /chain,
// POST answers the size of the body it read, anything else a short page. With PLAIN=1 in the
// environment it serves plain HTTP instead (its downstream call stays HTTPS).
// usage: node https_server.js PORT CERT KEY [DOWNSTREAM_PORT]
const fs = require("fs");
const http = require("http");
const https = require("https");

const [port, cert, key, downstream] = process.argv.slice(2);
const BIG = Buffer.alloc(5 * 1024 * 1024, "x");
const agent = new https.Agent({ keepAlive: true, rejectUnauthorized: false });

function answer(res, body) {
  res.writeHead(200, { "Content-Length": body.length });
  res.end(body);
}

function handle(req, res) {
  if (req.method === "POST") {
    let size = 0;
    req.on("data", (chunk) => (size += chunk.length));
    req.on("end", () => answer(res, Buffer.from(String(size))));
    return;
  }
  req.resume();
  if (req.url === "/big") {
    answer(res, BIG);
  } else if (req.url === "/chain" && downstream) {
    https.get({ host: "127.0.0.1", port: Number(downstream), path: "/chain", agent }, (down) => {
      const parts = [Buffer.from("node>")];
      down.on("data", (chunk) => parts.push(chunk));
      down.on("end", () => answer(res, Buffer.concat(parts)));
    });
  } else {
    answer(res, Buffer.from("hello from node over tls\n"));
  }
}

const server = process.env.PLAIN
  ? http.createServer(handle)
  : https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, handle);
server.listen(Number(port), "127.0.0.1");
