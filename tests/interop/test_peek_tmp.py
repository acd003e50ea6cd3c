import urllib.request, urllib.error
from tests.interop.test_mod_auth_openidc import apache, PROTECTED  # noqa
def test_peek(apache, token_cases):
    for k, t in token_cases.items():
        req = urllib.request.Request(apache.url + PROTECTED, headers={"Authorization": f"Bearer {t}"})
        try:
            r = urllib.request.urlopen(req); print(k, r.status, dict(r.headers))
        except urllib.error.HTTPError as e:
            print(k, e.code, dict(e.headers))
    print(apache.error_log.read_text())
    print("fetches", apache.proxy.fetches)
