// Real OAuth 2.0 / OpenID Connect authorization server (oidc-provider 9.13.3) for the
// integration tests. Prints exactly one line `LISTENING <port>` on stdout once listening;
// everything else goes to stderr. Exits when stdin closes and on SIGTERM/SIGINT.
//
// Env: PORT (default 0 = any free port), TOKEN_TTL (access/client-credentials token TTL in
// seconds, default 60), OIDC_IGNORE_STDIN=1 (do not exit when stdin closes), EXTRA_CLIENTS (path
// of a JSON file holding an array of client metadata registered besides the built-in clients,
// such as `private_key_jwt` clients with the public `jwks` of keys a test generated). With
// DEV_INTERACTIONS=1 a person signs in on the provider's own pages (see BROWSER LOGIN MODE). With
// TLS_CERT, TLS_KEY and TLS_CA (PEM file paths) it serves https instead, asks for client
// certificates (RFC 8705: `tls_client_auth` against TLS_CA, `self_signed_tls_client_auth`,
// certificate-bound tokens) and publishes `/mtls/token` as the token endpoint's mTLS alias.
import { readFileSync } from 'node:fs';
import crypto from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { URL } from 'node:url';

import { createLocalJWKSet, jwtVerify } from 'jose';
import Provider, { errors } from 'oidc-provider';

// Keep stdout for the single LISTENING line: route console.* (and the library's warnings,
// which use console / process.emitWarning) to stderr.
for (const level of ['log', 'info', 'warn', 'error', 'debug']) {
  console[level] = (...args) => process.stderr.write(`${args.map(String).join(' ')}\n`);
}

function intFromEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number.parseInt(raw, 10);
  if (!Number.isInteger(n) || n < 0 || String(n) !== raw.trim()) {
    process.stderr.write(`invalid ${name}=${JSON.stringify(raw)}\n`);
    process.exit(2);
  }
  return n;
}

const HOST = '127.0.0.1';
const REQUESTED_PORT = intFromEnv('PORT', 0);
const TOKEN_TTL = intFromEnv('TOKEN_TTL', 60);
const ACCOUNT_ID = 'test-user';
const API_RESOURCE = 'urn:tower-bearer:api';
const API_SCOPES = ['api:read', 'api:write'];
// A second resource server, so that one client can hold tokens for two audiences at once.
const BILLING_RESOURCE = 'urn:tower-bearer:billing';
const BILLING_SCOPES = ['billing:read', 'billing:write'];
const RESOURCES = new Map([
  [API_RESOURCE, API_SCOPES],
  [BILLING_RESOURCE, BILLING_SCOPES],
]);

const clients = [
  {
    client_id: 'cc-client',
    client_secret: 'cc-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  },
  {
    client_id: 'cc-weird',
    // Reserved characters on purpose: must be form-urlencoded inside HTTP Basic.
    client_secret: 'a b:c+d/e%f&g=h',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  },
  {
    client_id: 'public-native',
    token_endpoint_auth_method: 'none',
    application_type: 'native',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    // native + loopback: any port is accepted at /auth.
    redirect_uris: ['http://127.0.0.1/callback'],
  },
];
if (process.env.EXTRA_CLIENTS) {
  clients.push(...JSON.parse(readFileSync(process.env.EXTRA_CLIENTS, 'utf8')));
}

const configuration = {
  clients,
  clockTolerance: 0,
  scopes: ['openid', 'offline_access', ...API_SCOPES, ...BILLING_SCOPES],
  claims: { openid: ['sub'] },
  async findAccount(_ctx, sub) {
    if (sub !== ACCOUNT_ID) return undefined;
    return {
      accountId: sub,
      async claims() {
        return { sub };
      },
    };
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    // DPoP (RFC 9449) with server nonces demanded of every proof, at /token and at /me.
    // Requests without a proof are unaffected.
    dPoP: { enabled: true, nonceSecret: crypto.randomBytes(32), requireNonce: () => true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => undefined,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        const scopes = RESOURCES.get(resourceIndicator);
        if (scopes) {
          return {
            scope: scopes.join(' '),
            audience: resourceIndicator,
            accessTokenFormat: 'jwt',
            accessTokenTTL: TOKEN_TTL,
          };
        }
        throw new errors.InvalidTarget();
      },
    },
  },
  // Refresh tokens for the public client always (not only with offline_access).
  async issueRefreshToken(_ctx, client) {
    return client.clientId === 'public-native' && client.grantTypeAllowed('refresh_token');
  },
  ttl: {
    AccessToken: TOKEN_TTL,
    ClientCredentials: TOKEN_TTL,
    AuthorizationCode: 60,
    RefreshToken: 3600,
    Grant: 3600,
    Session: 3600,
    Interaction: 600,
    IdToken: 3600,
  },
  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  renderError(ctx, out, _error) {
    ctx.type = 'application/json; charset=utf-8';
    ctx.body = out;
  },
};

// ---- BROWSER LOGIN MODE (DEV_INTERACTIONS=1, for tests/browser.rs) --------------------------
// A person signs in: instead of the automatic login of `finishInteraction` below, the provider
// renders its own development login and consent pages (`devInteractions`), which a real browser
// fills in (tests/peers/browser.mjs). Those pages accept any login and password; findAccount
// knows only `test-user`, so that is the login to type. The public native client `public-native`
// above serves the loopback redirect. The device flow (RFC 8628) is enabled too, with the public
// client `browser-device`, so the browser can fill in its verification page (`/device`).
const DEV_INTERACTIONS = process.env.DEV_INTERACTIONS === '1';
if (DEV_INTERACTIONS) {
  configuration.features.devInteractions = { enabled: true };
  // devInteractions serves `/interaction/:uid` itself, at its own URL.
  delete configuration.interactions;
  configuration.features.deviceFlow = { enabled: true };
  clients.push({
    client_id: 'browser-device',
    token_endpoint_auth_method: 'none',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code'],
    response_types: [],
    redirect_uris: [],
  });
}
// ---- end of BROWSER LOGIN MODE ----------------------------------------------------------------

// --- Device authorization grant (RFC 8628), for tests/device.rs ------------------------------
// `/device/auth` issues user codes; the user enters one at `/device` (a form with an xsrf field,
// then a confirmation with Continue or Abort), then goes through the same interaction as a
// login. `device-cli` is a public client of the grant, with refresh tokens. DEVICE_CODE_TTL
// (seconds, default 600) is the device code's lifetime. The server sends no `interval`, so
// clients poll every 5 s, and it never answers `slow_down`.
configuration.features.deviceFlow = { enabled: true };
configuration.ttl.DeviceCode = intFromEnv('DEVICE_CODE_TTL', 600);
clients.push({
  client_id: 'device-cli',
  token_endpoint_auth_method: 'none',
  grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
  response_types: [],
  redirect_uris: [],
});
{
  const issueRefreshTokenBefore = configuration.issueRefreshToken;
  configuration.issueRefreshToken = async (ctx, client, code) => (
    client.grantTypeAllowed('urn:ietf:params:oauth:grant-type:device_code')
      ? client.grantTypeAllowed('refresh_token')
      : issueRefreshTokenBefore(ctx, client, code)
  );
}
// --- End of the device authorization grant ---------------------------------------------------

const TLS = process.env.TLS_CERT
  ? {
    cert: readFileSync(process.env.TLS_CERT),
    key: readFileSync(process.env.TLS_KEY),
    ca: readFileSync(process.env.TLS_CA),
  }
  : undefined;
if (TLS) {
  const peer = (ctx) => ctx.req.socket.getPeerX509Certificate?.();
  configuration.features.mTLS = {
    enabled: true,
    certificateBoundAccessTokens: true,
    tlsClientAuth: true,
    selfSignedTlsClientAuth: true,
    getCertificate: peer,
    certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
    certificateSubjectMatches(ctx, property, expected) {
      const cert = peer(ctx);
      if (property === 'tls_client_auth_san_dns') {
        return (cert?.subjectAltName ?? '').split(', ').includes(`DNS:${expected}`);
      }
      return false;
    },
  };
  configuration.clientAuthMethods = [
    'client_secret_basic', 'client_secret_post', 'client_secret_jwt', 'private_key_jwt', 'none',
    'tls_client_auth', 'self_signed_tls_client_auth',
  ];
}

// ---------------------------------------------------------------------------------------------
// Token exchange (RFC 8693), for tests/exchange.rs. Registered with `provider.registerGrantType`
// as oidc-provider documents for extension grants; a client uses it when its `grant_types`
// list TOKEN_EXCHANGE (tests register such clients through EXTRA_CLIENTS). The subject token
// (and the actor token, if any) must be an access token or a client-credentials token this
// provider issued and that is still valid, else `invalid_grant`. The issued token is an opaque
// client-credentials token of the exchanging client, for the audiences and resources asked
// (`aud`, all of them) and the scope asked; its introspection names the subject (`sub`: the
// subject token's account, or its client) and the actor (`act.sub`).
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
// A JWT subject of another issuer (a Kubernetes projected service-account token, a CI OIDC
// token) is taken when TRUSTED_SUBJECT_JWKS names a file holding that issuer's public keys (a
// JWKS): `jose` checks its signature, its `exp` and that its `aud` is this provider's issuer;
// its `sub` is the subject. As a cluster's issuer is trusted by a real token service.
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const trustedSubjectKeys = process.env.TRUSTED_SUBJECT_JWKS
  ? createLocalJWKSet(JSON.parse(readFileSync(process.env.TRUSTED_SUBJECT_JWKS, 'utf8')))
  : undefined;
// The claims of each exchanged token: the provider computes a token's `extra` when it saves it,
// through `extraTokenClaims`, and introspection shows them.
const exchangeClaims = new WeakMap();
configuration.extraTokenClaims = async (_ctx, token) => exchangeClaims.get(token);

function registerTokenExchange(provider) {
  const issuedBy = async (value) => {
    const token = await provider.AccessToken.find(value) ?? await provider.ClientCredentials.find(value);
    return token?.isValid ? token : undefined;
  };
  const principal = (token) => token.accountId ?? token.clientId;
  async function tokenExchange(ctx) {
    const { params, client } = ctx.oidc;
    for (const name of ['subject_token', 'subject_token_type']) {
      if (!params[name]) throw new errors.InvalidRequest(`missing required parameter '${name}'`);
    }
    if (params.actor_token && !params.actor_token_type) {
      throw new errors.InvalidRequest('actor_token_type is required with actor_token');
    }
    const jwtSubject = params.subject_token_type === JWT_TYPE && trustedSubjectKeys;
    for (const name of ['subject_token_type', 'actor_token_type', 'requested_token_type']) {
      if (params[name] && params[name] !== ACCESS_TOKEN_TYPE && !(name === 'subject_token_type' && jwtSubject)) {
        throw new errors.InvalidRequest(`unsupported ${name}`);
      }
    }
    const subject = jwtSubject
      ? await jwtVerify(params.subject_token, trustedSubjectKeys, { audience: provider.issuer })
        .then(({ payload }) => ({ accountId: payload.sub }), () => undefined)
      : await issuedBy(params.subject_token);
    if (!subject) throw new errors.InvalidGrant('subject_token is invalid or expired');
    const actor = params.actor_token ? await issuedBy(params.actor_token) : undefined;
    if (params.actor_token && !actor) throw new errors.InvalidGrant('actor_token is invalid or expired');

    const token = new provider.ClientCredentials({ client, scope: params.scope || undefined });
    exchangeClaims.set(token, { sub: principal(subject), ...(actor ? { act: { sub: principal(actor) } } : {}) });
    const audiences = [...[].concat(params.audience ?? []), ...[].concat(params.resource ?? [])];
    if (audiences.length) token.aud = audiences;
    const value = await token.save();
    ctx.body = {
      access_token: value,
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: 'Bearer',
      expires_in: token.expiration,
      scope: token.scope || undefined,
    };
  }
  provider.registerGrantType(TOKEN_EXCHANGE, tokenExchange, [
    'subject_token', 'subject_token_type', 'actor_token', 'actor_token_type',
    'requested_token_type', 'audience', 'resource', 'scope',
  ], ['audience', 'resource']);
}
// --------------------------------------------------------------------------- end token exchange

let server;
let provider;

async function finishInteraction(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction uid mismatch');
  const { prompt, params } = details;
  process.stderr.write(`interaction ${uid}: prompt=${prompt.name} reasons=${prompt.reasons.join(',')}\n`);

  // Grant everything that was asked for, in one round trip (login + consent together).
  const grant = new provider.Grant({ accountId: ACCOUNT_ID, clientId: params.client_id });
  const requested = typeof params.scope === 'string' ? params.scope.split(' ').filter(Boolean) : [];
  if (requested.length) grant.addOIDCScope(requested.join(' '));
  const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
  if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
  if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
  for (const resource of [].concat(params.resource ?? [])) {
    const scopes = requested.filter((s) => (RESOURCES.get(resource) ?? []).includes(s));
    if (scopes.length) grant.addResourceScope(resource, scopes.join(' '));
  }
  for (const [resource, scopes] of Object.entries(missingResourceScopes ?? {})) {
    grant.addResourceScope(resource, scopes.join(' '));
  }
  const grantId = await grant.save();

  await provider.interactionFinished(
    req,
    res,
    { login: { accountId: ACCOUNT_ID }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  );
}

function shutdown(reason) {
  process.stderr.write(`oidc-server: shutting down (${reason})\n`);
  if (server) {
    server.close();
    server.closeAllConnections?.();
  }
  process.exit(0);
}

async function main() {
  // Bind first so the issuer can carry the real port.
  const handler = { fn: undefined };
  server = TLS
    // Client certificates are asked for, not required: the provider decides per client, and a
    // self-signed one must get through the handshake.
    ? https.createServer({ ...TLS, requestCert: true, rejectUnauthorized: false }, (req, res) => handler.fn(req, res))
    : http.createServer((req, res) => handler.fn(req, res));
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(REQUESTED_PORT, HOST, resolve);
  });
  const { port } = server.address();

  const issuer = `${TLS ? 'https' : 'http'}://${HOST}:${port}`;
  if (TLS) {
    configuration.discovery = { mtls_endpoint_aliases: { token_endpoint: `${issuer}/mtls/token` } };
  }
  provider = new Provider(issuer, configuration);
  registerTokenExchange(provider); // RFC 8693: the block above
  provider.on('server_error', (_ctx, err) => process.stderr.write(`server_error: ${err?.stack ?? err}\n`));
  for (const event of ['grant.error', 'authorization.error', 'introspection.error', 'revocation.error',
    'userinfo.error', 'backchannel.error', 'check_session.error', 'discovery.error',
    'end_session.error', 'jwks.error', 'pushed_authorization_request.error', 'registration_create.error']) {
    provider.on(event, (_ctx, err) => {
      process.stderr.write(`${event}: ${err?.error ?? err?.name} ${err?.error_description ?? err?.message}`
        + `${err?.error_detail ? ` (detail: ${err.error_detail})` : ''}\n`);
    });
  }
  const providerCallback = provider.callback();

  handler.fn = (req, res) => {
    process.stderr.write(`${req.method} ${req.url}\n`);
    if (TLS && req.url.startsWith('/mtls/token')) {
      if (!req.socket.getPeerX509Certificate?.()) {
        res.statusCode = 400;
        res.setHeader('Content-Type', 'application/json');
        res.end(JSON.stringify({ error: 'invalid_request', error_description: 'the mTLS alias needs a client certificate' }));
        return;
      }
      req.url = req.url.slice('/mtls'.length);
    }
    const { pathname } = new URL(req.url, `http://${HOST}`);
    const m = /^\/interaction\/([^/]+)$/.exec(pathname);
    // In the browser login mode the provider's own pages answer (see BROWSER LOGIN MODE).
    if (req.method === 'GET' && m && !DEV_INTERACTIONS) {
      finishInteraction(req, res, m[1]).catch((err) => {
        process.stderr.write(`interaction error: ${err?.stack ?? err}\n`);
        if (!res.headersSent) {
          res.statusCode = 400;
          res.setHeader('Content-Type', 'application/json');
          res.end(JSON.stringify({ error: 'interaction_failed', error_description: String(err?.message ?? err) }));
        } else {
          res.end();
        }
      });
      return;
    }
    providerCallback(req, res);
  };

  process.stdout.write(`LISTENING ${port}\n`);
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
// The parent (a Rust test) holds our stdin pipe; when it dies the pipe closes and we exit.
// OIDC_IGNORE_STDIN=1 turns this off (e.g. `node oidc-server.mjs </dev/null &` by hand).
if (process.env.OIDC_IGNORE_STDIN !== '1') {
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('close', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume();
}

main().catch((err) => {
  process.stderr.write(`oidc-server failed: ${err?.stack ?? err}\n`);
  process.exit(1);
});
