"""Answer quality of the whole robot per category, on bench/data/dialogue_eval.yaml.

One graph per profile (subprocesses, isolated ROS domain): camera_node, fusion_node, memory_node,
knowledge_node and gateway_node with the profile's parameter file; every question goes through
the gateway's POST /chat as a user's would (greedy decoding). Categories:

* no_camera - questions about sight while camera_node runs but no frame has arrived yet: the
              reply must say it cannot see (keywords), never describe an invented scene.
* scene     - real photos from scikit-image (astronaut: a smiling person; coffee: nobody) and
              rendered signs (EXIT, OPEN, CAFE) fed to camera_node's image_raw at 5 Hz; asked
              once fusion_node's scene describes the new image.
* document  - questions about a document written for this set, ingested through POST /knowledge.
* memory    - a fact told in a fresh session, then a question about it.
* rules     - configured intents (the reply must be exactly the rules file's answer, source=rule)
              and sentences containing a rule's keywords in another sense (source=llm).

Scored automatically (whole-word keywords or numbers in the reply, case-insensitive, and
none of the item's `none` words; exact rule text). The
figures measure the models with this package's prompts and context, on this set only.

    .venv/bin/python bench/eval_dialogue.py                       # cpu_demo and cpu_quality
    .venv/bin/python bench/eval_dialogue.py --profile cpu_demo --max-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "dialogue_eval.yaml"
RESULTS = ROOT / "bench" / "results"


def start(module: str, namespace: str, params_file: Path, params: list[str], env, log: Path):
    args = [sys.executable, "-m", module, "--ros-args", "-r", f"__ns:={namespace}"]
    args += ["--params-file", str(params_file), *params]
    return subprocess.Popen(
        args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=tempfile.gettempdir()
    )


def contains(reply: str, keyword: str) -> bool:
    """Whole-word match ("no" is not found in "not" or "know"), case-insensitive."""
    keyword = keyword.lower().strip()
    return re.search(rf"(?<![a-z0-9]){re.escape(keyword)}(?![a-z0-9])", reply) is not None


def score(item: dict, answer: dict, expected_rule: str = "") -> bool:
    reply = answer.get("reply", "").lower().replace("\u2019", "'")
    if not answer.get("success"):
        return False
    if "rule" in item:
        return answer["source"] == "rule" and answer["reply"] == expected_rule
    if item.get("not_rule"):
        return answer["source"] == "llm"
    ok = True
    if "any" in item:
        ok &= any(contains(reply, k) for k in item["any"])
    if "all" in item:
        ok &= all(contains(reply, k) for k in item["all"])
    if "none" in item:
        ok &= not any(contains(reply, k) for k in item["none"])
    return ok


def run_profile(profile: str, data: dict, args) -> dict:
    sys.path.insert(0, str(ROOT / "test"))
    from gateway_http import Http
    from images import photo, sign

    from smolfusion_ros.dialogue.rules import load_rules

    params_file = ROOT / "config" / f"{profile}.yaml"
    work = Path(tempfile.mkdtemp(prefix=f"eval-dialogue-{profile}-"))
    env = os.environ | {"ROS_HOME": str(work)}
    namespace = f"/eval_{profile}_{os.getpid()}"
    llm = ["-p", "llm.temperature:=0.0", "-p", "llm.seed:=42", "-p", "vision.interval_s:=0.5"]
    procs = [
        start(
            "smolfusion_ros.nodes.camera_node",
            namespace,
            params_file,
            ["-p", "rate_hz:=5.0"],
            env,
            work / "camera.log",
        ),
        start(
            "smolfusion_ros.nodes.fusion_node",
            namespace,
            params_file,
            llm,
            env,
            work / "fusion.log",
        ),
        start(
            "smolfusion_ros.nodes.memory_node", namespace, params_file, [], env, work / "memory.log"
        ),
        start(
            "smolfusion_ros.nodes.knowledge_node",
            namespace,
            params_file,
            [],
            env,
            work / "knowledge.log",
        ),
        start(
            "smolfusion_ros.nodes.gateway_node",
            namespace,
            params_file,
            ["-p", "port:=0"],
            env,
            work / "gateway.log",
        ),
    ]
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    node = rclpy.create_node(f"eval_dialogue_{profile}")
    publisher = node.create_publisher(Image, f"{namespace}/image_raw", qos_profile_sensor_data)
    frame = {"rgb": None}
    stop = threading.Event()

    def feed() -> None:  # a camera driver at 5 Hz (nothing until the scene phase)
        while not stop.is_set():
            rgb = frame["rgb"]
            if rgb is not None:
                h, w = rgb.shape[:2]
                publisher.publish(
                    Image(height=h, width=w, encoding="rgb8", step=w * 3, data=rgb.tobytes())
                )
            stop.wait(0.2)

    threading.Thread(target=feed, daemon=True).start()
    rules = load_rules(ROOT / "config" / "rules.yaml")
    results: dict[str, list] = {}
    try:
        port, deadline = None, time.monotonic() + 180
        while port is None and time.monotonic() < deadline:
            found = re.search(
                r"listening on http://[\d.]+:(\d+)/", (work / "gateway.log").read_text()
            )
            port = int(found.group(1)) if found else None
            time.sleep(0.3)
        http = Http(port)
        while time.monotonic() < deadline:
            health = http.get("/health").json()
            if health["ready"] and health["services"]["knowledge"]:
                break
            time.sleep(0.5)
        print(f"\n== {profile}: {health['llm_model']}", flush=True)

        def ask(category: str, item: dict, session: str, expected_rule: str = "") -> None:
            t0 = time.monotonic()
            reply = http.post(
                "/chat", {"session_id": session, "text": item["q"], "max_tokens": args.max_tokens}
            )
            answer = (
                reply.json()
                if reply.status == 200
                else {"success": False, "error": reply.body.decode()}
            )
            ok = score(item, answer, expected_rule)
            results.setdefault(category, []).append(
                {
                    "q": item["q"],
                    "ok": ok,
                    "reply": answer.get("reply", answer.get("error", "")),
                    "source": answer.get("source", ""),
                    "scene_text": answer.get("scene_text", ""),
                    "knowledge_ids": answer.get("knowledge_ids", []),
                    "seconds": round(time.monotonic() - t0, 2),
                }
            )
            mark = "ok " if ok else "BAD"
            print(
                f"  [{mark}] {category}: {item['q']} -> {results[category][-1]['reply'][:110]!r}",
                flush=True,
            )

        for i, item in enumerate(data["no_camera"]):
            ask("no_camera", item, f"nocam{i}")

        current = None
        for i, item in enumerate(data["scene"]):
            key = item.get("image") or f"sign:{item['sign']}"
            if key != current:
                frame["rgb"] = photo(item["image"]) if "image" in item else sign(item["sign"])
                switched = time.time()
                # Wait for a scene description of a frame sent after the switch.
                wait_until = time.monotonic() + 60
                while time.monotonic() < wait_until:
                    scene = http.get("/scene").json()
                    if scene["available"] and scene["frame_stamp"] > switched + 0.3:
                        break
                    time.sleep(0.3)
                current = key
            ask("scene", item, f"scene{i}")

        doc = data["document"]
        ingest = http.upload(
            "/knowledge", {}, {"file": (doc["name"], doc["text"].encode(), "text/markdown")}
        )
        assert ingest.status == 200, ingest.body
        for i, item in enumerate(data["document_questions"]):
            ask("document", item, f"doc{i}")

        for i, item in enumerate(data["memory"]):
            http.post("/chat", {"session_id": f"mem{i}", "text": item["tell"], "max_tokens": 32})
            ask("memory", item, f"mem{i}")

        for i, item in enumerate(data["rules"]):
            expected = ""
            if "rule" in item:
                match = rules.match(item["q"], "en")
                assert match is not None and match.intent == item["rule"], (item, match)
                expected = match.answer
            ask("rules", item, f"rule{i}", expected)
    finally:
        stop.set()
        for proc in procs:
            proc.send_signal(2)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        node.destroy_node()
    return {"profile": profile, "model": health.get("llm_model", ""), "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=("cpu_demo", "cpu_quality", "both"), default="both")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(100, 199)))
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds.xml"))
    import rclpy

    rclpy.init()
    data = yaml.safe_load(DATA.read_text(encoding="utf-8"))
    profiles = ("cpu_demo", "cpu_quality") if args.profile == "both" else (args.profile,)
    reports = []
    try:
        for profile in profiles:
            reports.append(run_profile(profile, data, args))
    finally:
        rclpy.try_shutdown()
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"\nload average {os.getloadavg()}")
    for report in reports:
        total = sum(len(v) for v in report["results"].values())
        correct = sum(r["ok"] for v in report["results"].values() for r in v)
        print(
            f"\n{report['profile']} ({report['model']}): {correct}/{total} = {correct / total:.0%}"
        )
        for category, rows in report["results"].items():
            n = sum(r["ok"] for r in rows)
            print(f"  {category:10s} {n:2d}/{len(rows):2d} = {n / len(rows):.0%}")
        (RESULTS / f"dialogue_eval_{report['profile']}.json").write_text(
            json.dumps(report, indent=2)
        )


if __name__ == "__main__":
    main()
