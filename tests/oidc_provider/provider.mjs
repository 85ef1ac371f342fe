// A real OpenID Connect provider (panva/oidc-provider, OpenID Certified) on loopback, for tests.
// Configuration as JSON in argv[2]:
//   {"port": 0, "client_id": "...", "client_secret": "...", "redirect_uris": ["https://..."],
//    "accounts": {"ana": ["ssss-ops"], ...}}   account name -> its groups claim
// Any password signs an account in (the provider's development login form); an account not
// listed has no groups. Prints "listening <issuer>" once it accepts connections.
import http from 'node:http';

import Provider from 'oidc-provider';

const settings = JSON.parse(process.argv[2]);
const server = http.createServer();
server.listen(settings.port ?? 0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: settings.client_id,
      client_secret: settings.client_secret,
      redirect_uris: settings.redirect_uris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
    }],
    claims: { openid: ['sub'], profile: ['preferred_username', 'name'], groups: ['groups'] },
    scopes: ['openid', 'profile', 'groups'],
    pkce: { required: () => true },
    cookies: { keys: ['test-only-cookie-key'] },
    async findAccount(_ctx, id) {
      return {
        accountId: id,
        async claims() {
          return { sub: id, preferred_username: id, name: id, groups: settings.accounts[id] ?? [] };
        },
      };
    },
    // The dashboard is a first-party client: no consent screen (what a company IdP does for its own apps).
    async loadExistingGrant(ctx) {
      const existing = ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (existing) return ctx.oidc.provider.Grant.find(existing);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid profile groups');
      await grant.save();
      return grant;
    },
  });
  server.on('request', provider.callback());
  console.log(`listening ${issuer}`);
});
