// Node's http server for tracer's end-to-end tests. usage: node server.js PORT
// GET /chunked: body written in three parts (chunked); anything else: one fixed body.
// Requests with Expect: 100-continue get 100 Continue first (Node does it by itself).
const http = require("http");
const port = Number(process.argv[2]);
// With a second port, GET /chain first asks that port for /chain.
const downstream = Number(process.argv[3] || 0);
const server = http
  .createServer((req, res) => {
    if (req.url === "/chain" && downstream) {
      http.get({ host: "127.0.0.1", port: downstream, path: "/chain" }, (down) => {
        let body = "";
        down.on("data", (d) => (body += d));
        down.on("end", () => res.end("node>" + body));
      });
    } else if (req.url === "/chunked") {
      res.write("hello");
      res.write(" ");
      res.end("world");
    } else {
      res.end("hello from node\n");
    }
  })
  .listen(port, "127.0.0.1");
// Upgrade requests: 101, then echo whatever comes (no longer HTTP).
server.on("upgrade", (req, socket) => {
  socket.write("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
  socket.on("data", (d) => socket.write(d));
});
