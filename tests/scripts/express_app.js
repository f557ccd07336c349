// An express app for tracer's end-to-end tests of in-process links on an event loop.
// usage: node express_app.js PORT DOWNSTREAM_PORT
// GET /call   asks the downstream for /inside, then answers (the call belongs to the request)
// GET /hook   answers at once, then asks the downstream for /webhook 150 ms later (deferred
//             work: the call belongs to no request in flight when it is made)
// GET /slow   answers after 800 ms
const express = require("express");
const http = require("http");
const [port, downstream] = [Number(process.argv[2]), Number(process.argv[3])];

function get(path, done) {
  http.get({ host: "127.0.0.1", port: downstream, path }, (res) => {
    res.resume();
    res.on("end", () => done(res.statusCode));
  });
}

const app = express();
app.get("/call", (req, res) => get("/inside", (status) => res.send(`called ${status}\n`)));
app.get("/hook", (req, res) => {
  res.send("accepted\n");
  setTimeout(() => get("/webhook", () => {}), 150);
});
app.get("/slow", (req, res) => setTimeout(() => res.send("slow\n"), 800));
app.listen(port, "127.0.0.1");
