#!/usr/bin/env python3
# ruff: noqa: E501, RUF059  (kept as the team checked it against the reference server; not in CI)
"""End-to-end probe of a SMART Bulk Data server (written against smart-on-fhir/bulk-data-server).

Flow: discovery -> register a generated public JWKS -> client_credentials token with a
private_key_jwt assertion (RS384 or ES384) -> $export kick-off -> poll status (honouring
Retry-After) -> download every NDJSON file in the manifest -> count resources per type.

Needs: Python 3.9+, `cryptography`, `pyjwt`. Only talks to the --base URL given.
Usage: probe.py --base http://127.0.0.1:PORT [--alg RS384|ES384] [--out DIR] [--json REPORT.json]
"""
import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter

import jwt  # pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

FHIR_JSON = "application/fhir+json"
MAX_RETRY_AFTER = 30.0  # the server's 429 Retry-After is an absolute epoch value; never sleep on that


def b64url_uint(n: int, length: int | None = None) -> str:
    raw = n.to_bytes(length or (n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_key(alg: str):
    kid = "probe-" + uuid.uuid4().hex[:12]
    if alg == "RS384":
        priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub = priv.public_key().public_numbers()
        jwk = {"kty": "RSA", "alg": alg, "kid": kid, "use": "sig", "key_ops": ["verify"],
               "n": b64url_uint(pub.n), "e": b64url_uint(pub.e)}
    elif alg == "ES384":
        priv = ec.generate_private_key(ec.SECP384R1())
        pub = priv.public_key().public_numbers()
        jwk = {"kty": "EC", "alg": alg, "kid": kid, "use": "sig", "key_ops": ["verify"], "crv": "P-384",
               "x": b64url_uint(pub.x, 48), "y": b64url_uint(pub.y, 48)}
    else:
        raise SystemExit("alg must be RS384 or ES384")
    return priv, kid, {"keys": [jwk]}


def private_jwk(priv, kid, alg):
    """Full private JWK (for clients such as smart-on-fhir/bulk-data-client that take a JWK)."""
    if alg == "RS384":
        pn = priv.private_numbers()
        pub = pn.public_numbers
        return {"kty": "RSA", "alg": alg, "kid": kid, "n": b64url_uint(pub.n), "e": b64url_uint(pub.e),
                "d": b64url_uint(pn.d), "p": b64url_uint(pn.p), "q": b64url_uint(pn.q),
                "dp": b64url_uint(pn.dmp1), "dq": b64url_uint(pn.dmq1), "qi": b64url_uint(pn.iqmp)}
    pn = priv.private_numbers()
    return {"kty": "EC", "alg": alg, "kid": kid, "crv": "P-384", "x": b64url_uint(pn.public_numbers.x, 48),
            "y": b64url_uint(pn.public_numbers.y, 48), "d": b64url_uint(pn.private_value, 48)}


def register(reg_url, jwks):
    st, _, body = http("POST", reg_url, headers={"Content-Type": "application/x-www-form-urlencoded"},
                       data=form({"jwks": json.dumps(jwks)}))
    assert st == 200, ("register", st, body[:300])
    return body.decode().strip()


def http(method, url, *, headers=None, data=None, timeout=120):
    """Returns (status, headers, body-bytes); never raises on HTTP error statuses."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def form(d):
    return urllib.parse.urlencode(d).encode()


def retry_after(headers, default=1.0):
    v = headers.get("Retry-After")
    if not v:
        return default
    try:
        s = float(v)
    except ValueError:  # HTTP-date form
        from email.utils import parsedate_to_datetime
        try:
            s = parsedate_to_datetime(v).timestamp() - time.time()
        except Exception:
            return default
    return max(0.0, min(s, MAX_RETRY_AFTER))


class Client:
    def __init__(self, fhir_base, alg, scope):
        self.fhir = fhir_base.rstrip("/")
        self.alg, self.scope = alg, scope
        self.token = None
        self.log = []

    def note(self, msg):
        print(msg, flush=True)
        self.log.append(msg)

    def authorize(self):
        st, _, body = http("GET", self.fhir + "/.well-known/smart-configuration", headers={"Accept": "application/json"})
        assert st == 200, (st, body[:300])
        conf = json.loads(body)
        token_url, reg_url = conf["token_endpoint"], conf["registration_endpoint"]
        self.note(f"discovery: token_endpoint={token_url} registration_endpoint={reg_url} "
                  f"auth_methods={conf.get('token_endpoint_auth_methods_supported')}")
        priv, kid, jwks = make_key(self.alg)
        # Registration: form POST with the public JWKS (or jwks_url); the reply body is the client_id
        # (a server-signed JWT that embeds the JWKS, so the server keeps no client state).
        client_id = register(reg_url, jwks)
        self.note(f"registered: alg={self.alg} kid={kid} client_id=<{len(client_id)}-char JWT>")
        now = int(time.time())
        assertion = jwt.encode({"iss": client_id, "sub": client_id, "aud": token_url, "exp": now + 300,
                                "iat": now, "jti": uuid.uuid4().hex},
                               priv, algorithm=self.alg, headers={"kid": kid, "typ": "JWT"})
        st, _, body = http("POST", token_url, headers={"Content-Type": "application/x-www-form-urlencoded",
                                                       "Accept": "application/json"},
                           data=form({"grant_type": "client_credentials", "scope": self.scope,
                                      "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                                      "client_assertion": assertion}))
        assert st == 200, ("token", st, body[:500])
        tok = json.loads(body)
        self.token = tok["access_token"]
        self.note(f"token: scope={tok.get('scope')!r} expires_in={tok.get('expires_in')} type={tok.get('token_type')}")

    def hdrs(self, accept=FHIR_JSON, **extra):
        h = {"Accept": accept}
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        h.update(extra)
        return h

    def export(self, label, path, params=None, post_params=None, out_dir=None):
        """Kick off, poll, download. Returns a result dict."""
        t0 = time.monotonic()
        url = self.fhir + path
        if post_params is not None:
            body = {"resourceType": "Parameters",
                    "parameter": [{"name": k, "valueString": v} for k, v in post_params.items()]}
            st, h, b = http("POST", url, headers=self.hdrs(**{"Prefer": "respond-async", "Content-Type": FHIR_JSON}),
                            data=json.dumps(body).encode())
        else:
            if params:
                url += "?" + urllib.parse.urlencode(params)
            st, h, b = http("GET", url, headers=self.hdrs(Prefer="respond-async"))
        if st != 202:
            raise RuntimeError(f"{label}: kick-off {st} {b[:400]!r}")
        status_url = h["Content-Location"]
        polls, slept = 0, 0.0
        while True:
            st, h, b = http("GET", status_url, headers=self.hdrs(accept="application/json"))
            polls += 1
            if st == 200:
                manifest = json.loads(b)
                break
            if st in (202, 429) or (st >= 500 and b"transient" in b):
                d = retry_after(h)
                slept += d
                time.sleep(d)
                continue
            raise RuntimeError(f"{label}: status {st} {b[:400]!r}")
        t_manifest = time.monotonic() - t0
        counts, bytes_by_type, files = Counter(), Counter(), []
        for entry in manifest.get("output", []):
            need_auth = manifest.get("requiresAccessToken", False)
            hh = {"Accept": "application/fhir+ndjson"}
            if need_auth:
                hh["Authorization"] = "Bearer " + self.token
            st, _, data = http("GET", entry["url"], headers=hh, timeout=600)
            if st != 200:
                raise RuntimeError(f"{label}: download {entry['url']} -> {st} {data[:200]!r}")
            n = 0
            for line in data.splitlines():
                if not line.strip():
                    continue
                r = json.loads(line)
                counts[r["resourceType"]] += 1
                n += 1
            bytes_by_type[entry.get("type", "?")] += len(data)
            name = entry["url"].rsplit("/", 1)[-1]
            files.append({"file": name, "type": entry.get("type"), "manifest_count": entry.get("count"),
                          "lines": n, "bytes": len(data)})
            if entry.get("count") is not None and entry["count"] != n:
                self.note(f"  WARNING {name}: manifest count {entry['count']} != lines {n}")
            if out_dir:
                os.makedirs(os.path.join(out_dir, label), exist_ok=True)
                with open(os.path.join(out_dir, label, name), "wb") as f:
                    f.write(data)
        total = time.monotonic() - t0
        st_del, _, _ = http("DELETE", status_url, headers=self.hdrs())
        res = {"label": label, "kickoff": (("POST " + path) if post_params is not None else ("GET " + url[len(self.fhir):])),
               "status_url_shape": status_url.replace(status_url.rsplit("/", 1)[-1], "<jobid>"),
               "polls": polls, "slept_s": round(slept, 2), "manifest_s": round(t_manifest, 2),
               "total_s": round(total, 2), "transactionTime": manifest.get("transactionTime"),
               "requiresAccessToken": manifest.get("requiresAccessToken"), "n_files": len(files),
               "n_errors": len(manifest.get("error", [])), "n_deleted": len(manifest.get("deleted", []) or []),
               "counts": dict(sorted(counts.items())), "total_resources": sum(counts.values()),
               "bytes": sum(f["bytes"] for f in files), "bytes_by_type": dict(sorted(bytes_by_type.items())),
               "files": files, "delete_status": st_del}
        self.note(f"[{label}] {res['kickoff']}: {res['total_resources']} resources in {res['n_files']} files, "
                  f"{res['bytes']} bytes, manifest after {res['manifest_s']}s ({polls} polls), total {res['total_s']}s")
        self.note(f"    counts: {res['counts']}")
        return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="server root, e.g. http://127.0.0.1:9443")
    ap.add_argument("--alg", default="RS384", choices=["RS384", "ES384"])
    ap.add_argument("--scope", default="system/*.read")
    ap.add_argument("--since", default="2010-01-01T00:00:00Z")
    ap.add_argument("--group", default="BlueCrossBlueShield")
    ap.add_argument("--out", default=None, help="keep downloaded NDJSON here")
    ap.add_argument("--json", default=None, help="write the report here")
    ap.add_argument("--quick", action="store_true", help="only the two required exports")
    ap.add_argument("--client-config", default=None,
                    help="only register a fresh key and write a bulk-data-client config (JS) to this path")
    a = ap.parse_args()
    root = a.base.rstrip("/")
    # The server encodes per-client options in a base64url(JSON) path segment in front of /fhir.
    # {"secure": true} makes it reject un-authenticated kick-off / status / file requests.
    sim = base64.urlsafe_b64encode(json.dumps({"secure": True}).encode()).rstrip(b"=").decode()
    fhir = f"{root}/{sim}/fhir"
    if a.client_config:
        priv, kid, jwks = make_key(a.alg)
        cid = register(root + "/auth/register", jwks)
        cfg = {"fhirUrl": fhir, "tokenUrl": root + "/auth/token", "clientId": cid, "scope": a.scope,
               "privateKey": private_jwk(priv, kid, a.alg), "reporter": "text",
               "downloadAttachments": False, "lenient": False}
        with open(a.client_config, "w") as f:
            f.write("module.exports = " + json.dumps(cfg, indent=1) + ";\n")
        print("wrote", a.client_config)
        return 0
    report = {"base": root, "fhir_base": fhir, "alg": a.alg, "checks": {}, "exports": []}

    # Negative check: secured base URL, no token -> 401
    st, _, b = http("GET", fhir + "/$export", headers={"Accept": FHIR_JSON, "Prefer": "respond-async"})
    report["checks"]["no_token_kickoff_status"] = st
    print(f"no-token kick-off on secure base -> {st}")
    st, _, b = http("GET", fhir + "/$export", headers={"Accept": "application/fhir+ndjson", "Prefer": "respond-async",
                                                        "Authorization": "Bearer not-a-jwt"})
    report["checks"]["bad_token_status"] = st

    c = Client(fhir, a.alg, a.scope)
    t = time.monotonic()
    c.authorize()
    report["checks"]["auth_s"] = round(time.monotonic() - t, 3)

    since = a.since
    grp = f"/Group/{a.group}/$export"
    report["exports"].append(c.export("system_all", "/$export", {}, out_dir=a.out))
    report["exports"].append(c.export("group_pat_enc_since", grp, {"_type": "Patient,Encounter", "_since": since},
                                      out_dir=a.out))
    if not a.quick:
        report["exports"].append(c.export("group_pat_enc", grp, {"_type": "Patient,Encounter"}))
        report["exports"].append(c.export("system_pat_enc_since", "/$export", {"_type": "Patient,Encounter", "_since": since}))
        report["exports"].append(c.export("patient_level_pat", "/Patient/$export", {"_type": "Patient"}))
        report["exports"].append(c.export("group_post_pat_enc_since", grp, post_params={"_type": "Patient,Encounter", "_since": since}))
        report["exports"].append(c.export("system_elements", "/$export", {"_type": "Patient", "_elements": "gender"}))
        report["exports"].append(c.export("system_typefilter", "/$export",
                                          {"_type": "Encounter", "_typeFilter": "Encounter?class=AMB"}))
        # _since on Encounter is applied to period.start (see README); check it against the payload
    ok = True
    for e in report["exports"]:
        for f in e["files"]:
            if f["manifest_count"] is not None and f["manifest_count"] != f["lines"]:
                ok = False
    report["manifest_counts_match"] = ok
    report["log"] = c.log
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    print("manifest counts match file lines:", ok)
    return 0 if ok and report["checks"]["no_token_kickoff_status"] == 401 else 1


if __name__ == "__main__":
    sys.exit(main())
