// Node's https server (OpenSSL linked into the node executable, on memory buffers).
// usage: node https_server.js PORT CERT KEY
const fs = require("fs");
const https = require("https");

const [port, cert, key] = process.argv.slice(2);
https
  .createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
    res.end("hello from node over tls\n");
  })
  .listen(Number(port), "127.0.0.1");
