// MinIO-compatible front for s3rver: see the Dockerfile beside this file.
'use strict';
const fs = require('fs');
const http = require('http');
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
const server = http.createServer((req, res) => {
  if (req.url.startsWith('/minio/health/')) {
    res.writeHead(200);
    res.end();
    return;
  }
  handle(req, res);
});
server.requestTimeout = 0; // large multipart uploads may be slow
server.listen(9000, '0.0.0.0', () => console.log('S3 API (s3rver stand-in) on :9000'));
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
