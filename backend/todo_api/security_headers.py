"""The security headers every response carries (OWASP REST Security cheat sheet).

Its own small module: the app's request layer and the connection protocol (which answers 408
and 431 before any app code runs) both send them, and the protocol, loaded by Gunicorn's master
with the worker class, has no reason to import the app's modules.
"""

# OWASP's REST Security cheat sheet: nothing cached (task lists are private), no MIME sniffing,
# nothing framed, loaded or referred from an API response.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
# The Swagger UI and ReDoc pages (fastapi-offline) start with an inline script, style inline,
# load their bundles and /openapi.json from this server, and ReDoc runs a worker from a blob.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; worker-src blob:; frame-ancestors 'none'"
)

Header = tuple[bytes, bytes]


def security_headers(csp: str, hsts_seconds: int) -> tuple[Header, ...]:
    headers = [
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"content-security-policy", csp.encode()),
        (b"referrer-policy", b"no-referrer"),
    ]
    if hsts_seconds:
        headers.append((b"strict-transport-security", f"max-age={hsts_seconds}".encode()))
    return tuple(headers)
