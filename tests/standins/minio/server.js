// MinIO-compatible front for s3rver: see the Dockerfile beside this file.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const path = require('path');
const { argon2id } = require('hash-wasm');
const S3rver = require('s3rver');
const Account = require('s3rver/lib/models/account');
const S3Error = require('s3rver/lib/models/error');

function setting(name) {
  const file = process.env[`${name}_FILE`];
  if (file) {
    const path = fs.existsSync(`/run/secrets/${file}`) ? `/run/secrets/${file}` : file;
    return fs.readFileSync(path, 'utf8').trim();
  }
  return process.env[name];
}

const args = process.argv.slice(2);
if (args[0] !== 'server' || !args[1]) {
  console.error('usage: server DIRECTORY');
  process.exit(2);
}
const user = setting('MINIO_ROOT_USER');
const password = setting('MINIO_ROOT_PASSWORD');
if (!user || !password || password.length < 8) {
  console.error('MINIO_ROOT_USER and MINIO_ROOT_PASSWORD (8+ characters) must be set');
  process.exit(1);
}
// Replace s3rver's fixed S3RVER/S3RVER pair with the configured root credentials.
Account.DUMMY_ACCOUNT.revokeAccessKey('S3RVER');
Account.DUMMY_ACCOUNT.createKeyPair(user, password);

fs.mkdirSync(args[1], { recursive: true });
// Path-style addressing only, as MinIO without MINIO_DOMAIN: the Host `minio:9000` is not a bucket.
const s3 = new S3rver({ directory: args[1], silent: true, vhostBuckets: false });
// A full disk: MinIO answers 507 XMinioStorageFull, s3rver a bare 500 InternalError. Answer
// as MinIO does (outermost middleware, so it sees the error before s3rver's handler).
s3.middleware.unshift(async (ctx, next) => {
  try {
    await next();
  } catch (err) {
    if (err.code !== 'ENOSPC') throw err;
    const full = new S3Error('XMinioStorageFull', 'Storage backend has reached its minimum ' +
      'free drive threshold. Please delete a few objects to proceed.');
    full.status = 507;
    full.expose = true;
    throw full;
  }
});
const handle = s3.callback();

// MinIO's admin API, as much of it as init uses (minio-py's MinioAdmin): add-user, whose body
// is encrypted with the root secret key (madmin's format: argon2id, then AES-256-GCM in 16 KiB
// chunks), add-canned-policy and idp/builtin/policy/attach. Users get a key pair s3rver
// accepts, kept in DIR/.mlstack-standin-users.json across restarts as MinIO keeps its own.
// Policies are recorded and NOT enforced: s3rver has none, so a user reaches every bucket here.
const usersFile = path.join(args[1], '.mlstack-standin-users.json');
const users = fs.existsSync(usersFile) ? JSON.parse(fs.readFileSync(usersFile, 'utf8')) : {};
for (const [access, secret] of Object.entries(users)) Account.DUMMY_ACCOUNT.createKeyPair(access, secret);

async function decrypt(data, secret) {
  const salt = data.subarray(0, 32), aead = data[32], nonce = data.subarray(33, 41);
  if (aead !== 0) throw new Error('only AES-GCM admin payloads are supported here');
  const key = Buffer.from(await argon2id({ password: secret, salt, parallelism: 4, iterations: 1,
    memorySize: 65536, hashLength: 32, outputType: 'binary' }));
  const withId = (id) => { const n = Buffer.alloc(4); n.writeUInt32LE(id); return Buffer.concat([nonce, n]); };
  const first = crypto.createCipheriv('aes-256-gcm', key, withId(0));
  first.final();
  const aad = Buffer.concat([Buffer.from([0]), first.getAuthTag()]);
  const out = [];
  let rest = data.subarray(41);
  for (let id = 1; rest.length > 0; id++) {
    const chunk = rest.subarray(0, 16 * 1024 + 16);
    rest = rest.subarray(chunk.length);
    const chunkAad = Buffer.from(aad);
    if (rest.length === 0) chunkAad[0] = 0x80;
    const decipher = crypto.createDecipheriv('aes-256-gcm', key, withId(id));
    decipher.setAAD(chunkAad);
    decipher.setAuthTag(chunk.subarray(chunk.length - 16));
    out.push(decipher.update(chunk.subarray(0, chunk.length - 16)), decipher.final());
  }
  return Buffer.concat(out);
}

async function admin(req, res, body) {
  const url = new URL(req.url, 'http://minio');
  const command = url.pathname.slice('/minio/admin/v3/'.length);
  // The signature is not checked (s3rver does that for S3 calls only): the key must be root's.
  if (!(req.headers.authorization || '').includes(`Credential=${user}/`)) {
    res.writeHead(403, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ Code: 'AccessDenied', Message: 'admin API: root credentials only' }));
  } else if (command === 'add-user' && req.method === 'PUT') {
    const access = url.searchParams.get('accessKey');
    const { secretKey } = JSON.parse((await decrypt(body, password)).toString());
    users[access] = secretKey;
    fs.writeFileSync(usersFile, JSON.stringify(users));
    try { Account.DUMMY_ACCOUNT.revokeAccessKey(access); } catch (e) { /* new user */ }
    Account.DUMMY_ACCOUNT.createKeyPair(access, secretKey);
    res.writeHead(200);
    res.end();
  } else if (command === 'add-canned-policy' && req.method === 'PUT') {
    JSON.parse(body.toString());
    res.writeHead(200);
    res.end();
  } else if (command === 'idp/builtin/policy/attach' && req.method === 'POST') {
    const { policies, user: access } = JSON.parse((await decrypt(body, password)).toString());
    if (!users[access] || !policies.length) throw new Error(`no such user ${access}`);
    res.writeHead(204);
    res.end();
  } else {
    res.writeHead(501, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ Code: 'NotImplemented', Message: `stand-in: no admin ${command}` }));
  }
}

const server = http.createServer((req, res) => {
  if (req.url.startsWith('/minio/health/')) {
    res.writeHead(200);
    res.end();
    return;
  }
  if (req.url.startsWith('/minio/admin/v3/')) {
    const parts = [];
    req.on('data', (part) => parts.push(part));
    req.on('end', () => admin(req, res, Buffer.concat(parts)).catch((err) => {
      res.writeHead(400, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ Code: 'XMinioAdminInvalidRequest', Message: String(err) }));
    }));
    return;
  }
  handle(req, res);
});
server.requestTimeout = 0; // large multipart uploads may be slow
server.listen(9000, '0.0.0.0', () => console.log('S3 API (s3rver stand-in) on :9000'));
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
