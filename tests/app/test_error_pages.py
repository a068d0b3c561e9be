"""Dashboard pages answer errors with an HTML page that says what is wrong; the API keeps JSON."""

import pytest

from tests.app.conftest import auth


@pytest.mark.parametrize(
    "path,status,message",
    [
        ("/jobs/doesnotexist", 404, "no job with id &#x27;doesnotexist&#x27;"),
        ("/history?metric=bogus", 422, "metric &#x27;bogus&#x27; is not one of"),
        ("/history?batch_size=0", 422, "query.batch_size: Input should be greater than or equal to 1"),
        ("/no-such-page", 404, "Not Found"),
    ],
)
def test_pages_answer_errors_with_a_page(client, path, status, message):
    r = client.get(path)
    assert r.status_code == status and r.headers["content-type"].startswith("text/html")
    assert f"<h1>{status} " in r.text and message in r.text, r.text
    assert '<a href="/">' in r.text  # a way back


def test_the_api_keeps_json_errors(client):
    r = client.get("/api/jobs/doesnotexist")
    assert r.status_code == 404 and r.json() == {"detail": "no job with id 'doesnotexist'"}
    r = client.get("/api/jobs", params={"limit": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limit"]
    r = client.post("/api/jobs", json={"model": "bert-tiny"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/healthz").headers["content-type"] == "application/json"


def test_a_closed_page_says_a_token_is_needed(make_client):
    closed = make_client(open_reads=False)
    r = closed.get("/")
    assert r.status_code == 401 and "reads need a token" in r.text and r.headers["www-authenticate"] == "Bearer"
    assert closed.get("/", headers=auth()).status_code == 200
