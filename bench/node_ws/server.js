/**
 * The Node.js reference server for `bench/run.py`: gischat's room fan-out on Node and `ws`.
 *
 *     cd bench/node_ws && npm install --no-audit --no-fund   # bench/run.py does it when needed
 *     node bench/node_ws/server.js --host 127.0.0.1 --port 8003
 *
 * It does the naive server's job (bench/naive_server.py) and nothing more, the way a Node
 * developer would write it with `ws`: a set of sockets per room, and for every received text
 * `JSON.parse` (a frame that is not JSON closes the socket with 1003), `JSON.stringify` once
 * into a Buffer, and the same Buffer handed to `send` of every member, in turn, without waiting
 * (ws queues it per socket). A join and a leave send `{"type": "nb_users"}` to the whole room
 * the same way. GET /status answers like gischat's, so the bench polls every server alike.
 *
 * No permessage-deflate (ws's default on a server, and gischat's), no optional native add-ons
 * (bufferutil only speeds up masking, which a server does not do on what it sends; Node >= 18.14
 * validates UTF-8 natively). Node's default single event loop: one JavaScript thread, as the
 * Python servers are one asyncio thread.
 */

'use strict';

const http = require('node:http');
const { parseArgs } = require('node:util');
const { WebSocket, WebSocketServer } = require('ws');

const ROOM_PATH = /^\/room\/([^/]+)\/ws$/;

/** @type {Map<string, Set<WebSocket>>} */
const rooms = new Map();

/** The same bytes to every open socket of the room: serialised once, framed per socket by ws. */
function broadcast(members, data) {
  for (const socket of members) {
    if (socket.readyState === WebSocket.OPEN) {
      socket.send(data, { binary: false });
    }
  }
}

function nbUsers(members) {
  return Buffer.from(JSON.stringify({ type: 'nb_users', nb_users: members.size }));
}

function join(room, socket) {
  let members = rooms.get(room);
  if (members === undefined) {
    members = new Set();
    rooms.set(room, members);
  }
  members.add(socket);
  broadcast(members, nbUsers(members));
  socket.on('message', (data, isBinary) => {
    let message;
    try {
      message = JSON.parse(isBinary ? '' : data.toString('utf8'));
    } catch {
      socket.close(1003, 'not JSON');
      return;
    }
    broadcast(members, Buffer.from(JSON.stringify(message)));
  });
  socket.on('close', () => {
    members.delete(socket);
    broadcast(members, nbUsers(members));
  });
  // A protocol error closes the socket; without a listener it would crash the process.
  socket.on('error', () => {});
}

/** Same shape as gischat's /status; every other plain HTTP request gets a 404. */
function status(request, response) {
  if (request.method !== 'GET' || request.url !== '/status') {
    response.writeHead(404).end();
    return;
  }
  const counts = [...rooms].map(([name, members]) => ({ name, nb_connected_users: members.size }));
  response
    .writeHead(200, { 'Content-Type': 'application/json' })
    .end(JSON.stringify({ status: 'ok', healthy: true, rooms: counts }));
}

function main() {
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '8003' },
    },
  });
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  const server = http.createServer(status);
  server.on('upgrade', (request, tcp, head) => {
    const path = ROOM_PATH.exec(new URL(request.url, 'http://localhost').pathname);
    let room;
    try {
      room = path === null ? undefined : decodeURIComponent(path[1]);
    } catch {
      room = undefined; // malformed percent-encoding
    }
    if (room === undefined) {
      tcp.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    wss.handleUpgrade(request, tcp, head, (socket) => join(room, socket));
  });
  server.listen(Number(values.port), values.host, () => {
    console.log(`node ws reference server on http://${values.host}:${values.port}`);
  });
  // The bench stops its servers with SIGTERM; exit at once, as the Python servers do.
  process.on('SIGTERM', () => process.exit(0));
}

main();
