// Verifies JWTs with npm `jose` the way a Node relying party would: the issuer's JWKS
// fetched over HTTP by createRemoteJWKSet, then jwtVerify with every check pinned.
//
// stdin:  {"jwksUrl": "...", "issuer": "...", "audience": "...", "tokens": {"name": "jwt"}}
// stdout: {"jose": "<version>", "results": {"name": {"ok": true, "alg": "...", "payload": {...}}
//          | {"ok": false, "code": "ERR_...", "claim": "...", "message": "..."}}}
import { readFileSync } from 'node:fs';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const input = JSON.parse(readFileSync(0, 'utf8'));
const jwks = createRemoteJWKSet(new URL(input.jwksUrl));
const options = {
  issuer: input.issuer,
  audience: input.audience,
  algorithms: ['RS256', 'ES256'],
  requiredClaims: ['exp', 'iat', 'nbf', 'sub', 'jti'],
  typ: 'at+jwt', // RFC 9068 §4: the header type of an access token
};

const results = {};
for (const [name, token] of Object.entries(input.tokens)) {
  try {
    const { payload, protectedHeader } = await jwtVerify(token, jwks, options);
    results[name] = { ok: true, alg: protectedHeader.alg, payload };
  } catch (err) {
    results[name] = { ok: false, code: err.code ?? err.name, claim: err.claim, message: err.message };
  }
}
const version = JSON.parse(
  readFileSync(new URL('./node_modules/jose/package.json', import.meta.url), 'utf8'),
).version;
process.stdout.write(JSON.stringify({ jose: version, results }));
