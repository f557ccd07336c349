// Node's https client: requests one after another on one keep-alive connection, then prints
// the statuses. A path written +PATH is a POST of 5 MB to PATH.
// usage: node https_client.js PORT PATH...
const https = require("https");

const [port, ...paths] = process.argv.slice(2);
const agent = new https.Agent({ keepAlive: true, maxSockets: 1, rejectUnauthorized: false });
const statuses = [];

function next(i) {
  if (i === paths.length) {
    console.log(statuses.join(" "));
    agent.destroy();
    return;
  }
  const post = paths[i].startsWith("+");
  const body = post ? Buffer.alloc(5 * 1024 * 1024, "y") : null;
  const req = https.request(
    {
      host: "127.0.0.1",
      port: Number(port),
      path: post ? paths[i].slice(1) : paths[i],
      method: post ? "POST" : "GET",
      headers: post ? { "Content-Length": body.length } : {},
      agent,
    },
    (res) => {
      res.resume();
      res.on("end", () => {
        statuses.push(res.statusCode);
        next(i + 1);
      });
    },
  );
  req.end(body);
}
next(0);
