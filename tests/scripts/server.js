// Node's http server for tracer's end-to-end tests. usage: node server.js PORT
// GET /chunked: body written in three parts (chunked); anything else: one fixed body.
const http = require("http");
const port = Number(process.argv[2]);
http
  .createServer((req, res) => {
    if (req.url === "/chunked") {
      res.write("hello");
      res.write(" ");
      res.end("world");
    } else {
      res.end("hello from node\n");
    }
  })
  .listen(port, "127.0.0.1");
