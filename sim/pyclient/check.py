"""Drive binance-sim with Binance's official, unmodified Python connector (PyPI
`binance-connector`), changing nothing but the base URLs.

    python check.py http://127.0.0.1:PORT ws://127.0.0.1:PORT

Prints one JSON document on stdout with what the client received, for the Rust test
(sim/tests/pyclient.rs) to compare with the simulator's own data model. Exits non-zero if the
client library raised where it should not have.
"""

import json
import sys
import threading
import time

from binance.error import ClientError
from binance.spot import Spot
from binance.websocket.spot.websocket_stream import SpotWebsocketStreamClient


def main() -> int:
    rest_url, ws_url = sys.argv[1], sys.argv[2]
    out = {}
    client = Spot(base_url=rest_url)
    out["ping"] = client.ping()
    out["time"] = client.time()
    info = client.exchange_info(symbol="BTCUSDT")
    out["exchange_info_symbols"] = [s["symbol"] for s in info["symbols"]]
    out["klines"] = client.klines("BTCUSDT", "1m", limit=5)
    out["klines_1h_range"] = client.klines(
        "ETHUSDT", "1h", startTime=1_700_000_000_000, endTime=1_700_036_000_000
    )
    try:
        client.klines("NOSUCHPAIR", "1m")
        out["bad_symbol"] = None
    except ClientError as e:
        out["bad_symbol"] = {"status": e.status_code, "code": e.error_code, "msg": e.error_message}
    try:
        client.klines("BTCUSDT", "2m")
        out["bad_interval"] = None
    except ClientError as e:
        out["bad_interval"] = {"status": e.status_code, "code": e.error_code, "msg": e.error_message}

    events = []
    closed = threading.Event()

    def on_message(_, message):
        data = json.loads(message)
        if data.get("e") == "kline":
            events.append(data)
            if data["k"]["x"]:
                closed.set()

    ws = SpotWebsocketStreamClient(stream_url=ws_url, on_message=on_message)
    ws.kline(symbol="btcusdt", interval="1m")
    closed.wait(timeout=20)
    time.sleep(0.2)
    ws.stop()
    out["ws_events"] = events
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
