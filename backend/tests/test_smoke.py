from tests.support import auth


def test_create_then_list(api):
    created = api.post("/api/alice/tasks", json={"title": "x"}, headers=auth("alice"))
    assert created.status_code == 201, created.text
    listed = api.get("/api/alice/tasks", headers=auth("alice"))
    assert [t["title"] for t in listed.json()] == ["x"]
