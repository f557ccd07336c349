// Node's http client for tracer's end-to-end tests: N GETs on one keep-alive connection.
// usage: node client.js PORT N; prints the statuses.
const http = require("http");
const [port, n] = [Number(process.argv[2]), Number(process.argv[3])];
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const statuses = [];
function next(i) {
  if (i === n) {
    console.log(statuses.join(" "));
    agent.destroy();
    return;
  }
  http.get({ host: "127.0.0.1", port, path: `/node/${i}`, agent }, (res) => {
    res.resume();
    res.on("end", () => {
      statuses.push(res.statusCode);
      next(i + 1);
    });
  });
}
next(0);
