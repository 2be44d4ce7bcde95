"""Stack Exchange dumps: real Posts.xml/Users.xml schema, extracted directory and .7z, malformed input."""

from __future__ import annotations

import shutil

from curation.sources.htmltext import html_to_text
from curation.sources.stackexchange import StackExchangeSource, StackExchangeStage, license_of, parse_tags
from minisigma.core import manifest
from minisigma.core.runner import run_stage
from minisigma.core.shards import iter_docs, list_shards, sha256_file
from tests.sources_fixtures import se_xml, write_7z

SITE = "unix.stackexchange.com"


def q(i, tags, score=5, accepted=None, body=None, title=None, date="2012-03-01T10:00:00.000", **kw):
    r = {"Id": i, "PostTypeId": 1, "CreationDate": date, "Score": score, "ViewCount": 100,
         "Body": body if body is not None else f"<p>How do I tune thing {i}?</p>",
         "OwnerUserId": 10, "Title": title if title is not None else f"Tuning thing {i}", "Tags": tags,
         "AnswerCount": 2, "CommentCount": 0}
    if accepted:
        r["AcceptedAnswerId"] = accepted
    r.update(kw)
    return {k: v for k, v in r.items() if v is not ...}


def a(i, parent, score=3, body=None, date="2012-03-02T10:00:00.000", **kw):
    r = {"Id": i, "PostTypeId": 2, "ParentId": parent, "CreationDate": date, "Score": score,
         "Body": body if body is not None else f"<p>Answer {i}: run</p><pre><code>sysctl -w vm.x={i}\n  done\n</code></pre>",
         "OwnerUserId": 11 if i % 2 else 12, "CommentCount": 0}
    r.update(kw)
    return {k: v for k, v in r.items() if v is not ...}


def posts() -> list[dict]:
    return [
        q(1, "<linux><kernel>", accepted=3),
        a(2, 1, score=9),
        a(3, 1, score=1),  # accepted, low score: kept because accepted
        a(4, 1, score=4, date="2019-01-01T00:00:00.000", LastEditDate="2019-02-01T00:00:00.000"),
        a(5, 1, score=0),  # below the answer threshold
        q(6, "|python|pandas|"),  # out of scope (new-style tags)
        a(7, 6, score=10),
        q(8, "|docker|networking|", accepted=9, date="2020-01-01T00:00:00.000", ContentLicense="CC BY-SA 4.0"),
        a(9, 8, score=2, ContentLicense="CC BY-SA 4.0"),
        q(10, "<bash>", score=-2),  # low score
        q(11, "<cuda>", body=...),  # missing Body
        q(12, "<nvidia>", title=...),  # missing Title
        a(13, 1, ParentId=...),  # answer without a parent
        q(14, "<performance>", body="<p>Broken <b>markup<p>with <code>perf stat</i> and<pre><code>perf record -g\n"),
        a(15, 14, score=2, body="<div><ul><li>first<li>second</ul><pre>echo unterminated"),
        a(16, 14, score=3, body=...),  # in-scope answer without Body
        q(17, "<linux>", body="<p>   </p><img src='x.png'>"),  # no text at all
        a(18, 17, score=5),
        q(19, "<ssh>"),  # no answers
        q(20, "<kubernetes>", accepted=21),
        a(21, 20, score=1),
    ]


USERS = [{"Id": 10, "DisplayName": "Asker Ada", "Reputation": 10}, {"Id": 11, "DisplayName": "Odd Olga"},
         {"Id": 12, "DisplayName": "Even Ezra"}]


def run(dump, out, **kw):
    cfg = {"dumps": [{"site": SITE, "path": str(dump)}], **kw}
    return run_stage(StackExchangeStage(StackExchangeSource.model_validate(cfg)), [], out, executor="local",
                     progress=False)


def test_html_bodies_keep_code_and_survive_broken_markup():
    t = html_to_text("<p>Try <code>ls -l</code>:</p><pre><code>for f in *; do\n    echo $f\ndone\n</code></pre>"
                     "<blockquote><p>quoted</p></blockquote><ol><li>a</li><li>b</li></ol>")
    assert t == "Try `ls -l`:\n\n```\nfor f in *; do\n    echo $f\ndone\n```\n\n> quoted\n\n- a\n- b"
    assert "```\necho unterminated\n```" in html_to_text("<div><ul><li>x<li>y</ul><pre>echo unterminated")


def test_license_by_date_and_tags_both_formats():
    assert license_of({"CreationDate": "2010-01-01T00:00:00"}) == "CC BY-SA 2.5"
    assert license_of({"CreationDate": "2010-01-01T00:00:00", "LastEditDate": "2015-01-01T00:00:00"}) == "CC BY-SA 3.0"
    assert license_of({"CreationDate": "2019-01-01T00:00:00"}) == "CC BY-SA 4.0"
    assert license_of({"CreationDate": "2010-01-01", "ContentLicense": "CC BY-SA 3.0"}) == "CC BY-SA 3.0"
    assert parse_tags("<c++><linux>") == parse_tags("|c++|linux|") == ["c++", "linux"]


def check_full_run(m, out):
    docs = {d["metadata"]["question_id"]: d for d in iter_docs(out)}
    assert sorted(docs) == [1, 8, 14, 20]
    d = docs[1]
    assert d["url"] == f"https://{SITE}/q/1" and d["source"] == "stackexchange"
    md = d["metadata"]
    assert [x["id"] for x in md["answers"]] == [3, 2, 4]  # accepted first, then the top-scoring two
    assert md["answers"][0]["accepted"] and md["answers"][0]["author"]["name"] == "Odd Olga"
    assert md["author"] == {"name": "Asker Ada", "url": f"https://{SITE}/users/10"}
    assert md["license"] == "CC BY-SA 3.0" and md["answers"][2]["license"] == "CC BY-SA 4.0"
    assert md["tags"] == ["linux", "kernel"] and md["category"] == "os_kernel"
    assert "Asker Ada" in md["attribution"] and f"https://{SITE}/a/4" in md["attribution"]
    assert d["text"].startswith("# Tuning thing 1\n\nHow do I tune thing 1?\n\n## Accepted answer (score 1)")
    assert "```\nsysctl -w vm.x=2\n  done\n```" in d["text"]
    assert docs[8]["metadata"]["category"] == "devops_tooling" and docs[8]["metadata"]["license"] == "CC BY-SA 4.0"
    assert "```\nperf record -g\n```" in docs[14]["text"] and "with perf stat and" in docs[14]["text"]
    assert docs[14]["metadata"]["category"] == "os_kernel"
    c = m["counts"]
    assert c["dropped"] == {"low_score": 1, "no_answer": 1}
    assert c["quarantined"] == {"answer_missing_field:Body": 1, "answer_missing_field:ParentId": 1,
                                "empty_body": 1, "missing_field:Body": 1, "missing_field:Title": 1}
    assert m["stats"]["out_of_scope"] == 1 and m["stats"]["answers_below_threshold"] == 1
    assert manifest.verify(out) == []


def test_extracted_directory_dump(tmp_path):
    d = tmp_path / "dump"
    d.mkdir()
    (d / "Posts.xml").write_bytes(se_xml("posts", posts()))
    (d / "Users.xml").write_bytes(se_xml("users", USERS))
    m = run(d, tmp_path / "out")
    check_full_run(m, tmp_path / "out")
    assert not (tmp_path / "out" / ".work" / "00000.sqlite").exists()  # the spill is removed


def test_7z_site_archive_streams_and_parts_split_the_work(tmp_path):
    archive = tmp_path / f"{SITE}.7z"
    write_7z(archive, {"Posts.xml": se_xml("posts", posts()), "Users.xml": se_xml("users", USERS),
                       "Tags.xml": se_xml("tags", [{"Id": 1, "TagName": "linux", "Count": 3}])})
    m = run(archive, tmp_path / "out")
    check_full_run(m, tmp_path / "out")
    m2 = run(archive, tmp_path / "parts", parts=2)
    assert len(list_shards(tmp_path / "parts")) == 2
    assert sorted(x["id"] for x in iter_docs(tmp_path / "parts")) == sorted(x["id"] for x in iter_docs(tmp_path / "out"))
    assert m2["counts"]["in"] == m["counts"]["in"] + 1  # the parentless answer is seen by both parts
    assert manifest.verify(tmp_path / "parts") == []


def test_dump_ending_mid_record_keeps_what_came_before(tmp_path):
    full = se_xml("posts", posts())
    cut = full[: full.index(b'Id="14"') + 40]  # inside question 14's row
    (tmp_path / "Posts.xml").write_bytes(cut)
    m = run(tmp_path / "Posts.xml", tmp_path / "out")
    assert sorted(d["metadata"]["question_id"] for d in iter_docs(tmp_path / "out")) == [1, 8]
    assert m["counts"]["quarantined"]["truncated_xml"] == 1
    assert m["stats"]["users_xml_missing"] == 1
    assert manifest.verify(tmp_path / "out") == []
    # the same cut inside a .7z, and an archive that is itself cut short
    write_7z(tmp_path / "cut.7z", {"Posts.xml": cut})
    m = run(tmp_path / "cut.7z", tmp_path / "out7z")
    assert m["counts"]["quarantined"]["truncated_xml"] == 1 and m["counts"]["out"] == 2
    write_7z(tmp_path / "whole.7z", {"Posts.xml": full})
    raw = (tmp_path / "whole.7z").read_bytes()
    (tmp_path / "short.7z").write_bytes(raw[: len(raw) // 2])
    m = run(tmp_path / "short.7z", tmp_path / "short")
    assert m["counts"]["quarantined"] == {"bad_archive": 1} and m["counts"]["out"] == 0
    assert manifest.verify(tmp_path / "short") == []


def test_stackexchange_on_ray_matches_local(tmp_path, ray_local):
    d = tmp_path / "dump"
    d.mkdir()
    (d / "Posts.xml").write_bytes(se_xml("posts", posts()))
    shutil.copy(d / "Posts.xml", d / "copy.xml")
    cfg = StackExchangeSource.model_validate({"dumps": [{"site": SITE, "path": str(d)}], "parts": 2})
    run_stage(StackExchangeStage(cfg), [], tmp_path / "local", executor="local", progress=False)
    m = run_stage(StackExchangeStage(cfg), [], tmp_path / "ray", progress=False)
    assert m["cluster"]["executor"] == "ray"
    assert {p.name: sha256_file(p) for p in list_shards(tmp_path / "ray")} == \
        {p.name: sha256_file(p) for p in list_shards(tmp_path / "local")}
