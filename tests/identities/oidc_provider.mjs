// A real OpenID provider on loopback for the tests: oauth2-mock-server (npm), whose
// client_credentials access tokens get the subject and audience the test asks for.
// Usage: node oidc_provider.mjs <path of oauth2-mock-server's index.mjs> <port>
import { pathToFileURL } from "node:url";

const [modulePath, port] = process.argv.slice(2);
const { OAuth2Server } = await import(pathToFileURL(modulePath).href);

const server = new OAuth2Server();
await server.issuer.keys.generate("RS256");
server.service.on("beforeTokenSigning", (token, req) => {
  token.payload.sub = req.body.client_id;
  token.payload.aud = req.body.aud;
});
await server.start(Number(port), "127.0.0.1");
console.log(`issuer ${server.issuer.url}`);
