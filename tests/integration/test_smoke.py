from jetagents import Client, Host


async def test_increment_and_get(host: Host, client: Client) -> None:
    ref = client.agent("counter", "c1")
    assert await ref.request("increment", {"by": 2}) == 2
    assert await ref.request("get", delivery="at-most-once") == 2
