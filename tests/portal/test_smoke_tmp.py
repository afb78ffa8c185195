import pytest


@pytest.mark.django_db
def test_pages(alice_web):
    for url in [
        "/",
        "/overview/",
        "/data/",
        "/jobs/",
        "/jobs/new/",
        "/team/",
        "/api-keys/",
        "/offers/",
        "/usage/",
    ]:
        r = alice_web.get(url, follow=True)
        assert r.status_code == 200, (url, r.content[:2000])
    from django.test import Client

    c = Client()
    for url in ["/", "/login/", "/signup/", "/password-reset/"]:
        r = c.get(url)
        assert r.status_code == 200, (url, r.content[:3000])
