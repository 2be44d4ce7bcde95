"""Stack Exchange data dumps (Stack Overflow, Server Fault, Super User, Unix & Linux, Ask Ubuntu ...).

Input layout, as published (archive.org/details/stackexchange): a site archive `<site>.7z` holding
Posts.xml, Users.xml, ...; Stack Overflow split per table (`stackoverflow.com-Posts.7z`,
`stackoverflow.com-Users.7z`); or the same files already extracted into a directory. A .7z is
streamed: py7zr decompresses the member in a thread into a pipe that lxml's iterparse reads, so
neither the archive nor Posts.xml is ever held in memory or unpacked to disk.

The join (bounded memory, one pass over Posts.xml): the dump is ordered by Id and answers come
after their question. Questions that pass the tag allow-list and score threshold are spilled to a
task-local SQLite file; answers whose parent is there (and that are accepted or score high enough)
are spilled beside them; elements are cleared as the parse goes. Then Users.xml is streamed once
for the display names of the authors we need. Finally every spilled question, in Id order,
becomes one Document with its accepted answer and its top-scoring answers. SQLite rather than two
passes: a second pass would decompress a 20 GB archive twice, the spill costs a few hundred MB of
disk for the system-domain slice of Stack Overflow.

Units counted in the manifest: in = questions within the tag allow-list (+ malformed rows and
input failures); out = threads written; dropped = low score, no answer; quarantined = missing
fields, bodies with no text, a truncated XML or a bad archive. Rows outside the allow-list are out
of scope and only counted in stats (`rows_seen`, `out_of_scope`).

Attribution (CC BY-SA, as the dump's license asks): each thread's metadata names the license of
each post (the dump's ContentLicense, else by the date of the post's latest revision: 2.5 before
2011-04-08, 3.0 before 2018-05-02, 4.0 after), the authors with their profile links, and the links
of the question and answers.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Literal

from lxml import etree
from pydantic import Field

from curation.sources import categories
from curation.sources.common import SOURCE_MANIFESTS, iso_utc, load_manifest, make_doc, stage_dir
from curation.sources.htmltext import EmptyHTML, html_to_text
from minisigma.core.errors import UserError
from minisigma.core.recipes import Section
from minisigma.core.runner import Sink, Stage, Task
from curation.sources.registry import register_source, stage_runner

LICENSES = [("2011-04-08", "CC BY-SA 2.5"), ("2018-05-02", "CC BY-SA 3.0"), ("9999", "CC BY-SA 4.0")]
LICENSE_URLS = {"CC BY-SA 2.5": "https://creativecommons.org/licenses/by-sa/2.5/",
                "CC BY-SA 3.0": "https://creativecommons.org/licenses/by-sa/3.0/",
                "CC BY-SA 4.0": "https://creativecommons.org/licenses/by-sa/4.0/"}
QUESTION_FIELDS = ("Id", "Title", "Body", "Score", "CreationDate", "Tags")
ANSWER_FIELDS = ("Id", "Body", "Score")


class SiteSpec(Section):
    site: str  # host name, e.g. unix.stackexchange.com
    files: list[str]  # dump file names (as published) holding Posts.xml [and Users.xml]
    category: str | None = None  # a default for threads whose tags say nothing


class StackExchangeManifest(Section):
    description: str = ""
    download_base: str
    tags: list[str]
    sites: list[SiteSpec]


class SeDump(Section):
    site: str
    path: Path  # <site>.7z, <site>-Posts.7z, Posts.xml, or a directory holding Posts.xml
    users: Path | None = None  # Users.xml / <site>-Users.7z; default: found beside `path`


class StackExchangeSource(Section):
    """Recipe section of the Stack Exchange source."""

    type: Literal["stackexchange"] = "stackexchange"
    name: str = "stackexchange"
    manifest: Path = SOURCE_MANIFESTS / "stackexchange.yaml"
    dump_dir: Path | None = None  # holds the manifest's files (used when `dumps` is not given)
    sites: list[str] | None = None  # a subset of the manifest's sites
    dumps: list[SeDump] | None = None  # explicit dump files (instead of dump_dir + manifest)
    tags: list[str] | None = None  # tag allow-list; default: the manifest's
    min_question_score: int = 1
    min_answer_score: int = 1
    top_answers: int = Field(2, ge=0, description="top-scoring answers kept besides the accepted one")
    require_answer: bool = True
    parts: int = Field(1, ge=1, description="tasks per dump (questions split by Id modulo parts)")


def license_of(row: dict) -> str:
    if row.get("ContentLicense"):
        return row["ContentLicense"]
    when = row.get("LastEditDate") or row.get("CreationDate") or ""
    return next(lic for until, lic in LICENSES if when < until)


def parse_tags(raw: str) -> list[str]:
    """'<linux><bash>' (older dumps) or '|linux|bash|' (2023+ dumps) -> ['linux', 'bash']."""
    raw = raw or ""
    if raw.startswith("<"):
        return [t for t in raw.strip("<>").split("><") if t]
    return [t for t in raw.split("|") if t]


# --------------------------------------------------------------------------- opening dump members
class _PipeWriter:
    """py7zr writer (Py7zIO protocol) that feeds decompressed bytes into a pipe."""

    def __init__(self, f: IO[bytes]):
        self.f = f
        self.n = 0

    def write(self, s) -> int:
        self.f.write(s)
        self.n += len(s)
        return len(s)

    def read(self, size=None) -> bytes:
        return b""

    def seek(self, offset, whence=0) -> int:
        return self.n

    def flush(self) -> None:
        self.f.flush()

    def size(self) -> int:
        return self.n

    def close(self) -> None:
        self.f.flush()


class ArchiveError(Exception):
    pass


@contextmanager
def _stream_7z(archive: Path, member: str) -> Iterator[IO[bytes]]:
    import py7zr

    try:
        z = py7zr.SevenZipFile(archive, mode="r")
    except Exception as e:  # py7zr raises several types for damaged archives
        raise ArchiveError(f"{archive.name}: {type(e).__name__}: {str(e)[:120]}") from None
    names = z.getnames()
    target = next((n for n in names if n.rsplit("/", 1)[-1] == member), None)
    if target is None:
        z.close()
        raise FileNotFoundError(f"{archive.name} holds no {member}")
    rfd, wfd = os.pipe()
    reader, writer = os.fdopen(rfd, "rb"), os.fdopen(wfd, "wb")
    failure: list[BaseException] = []

    class Factory(py7zr.WriterFactory):
        def create(self, filename):
            return _PipeWriter(writer)

    def pump() -> None:
        try:
            z.extract(targets=[target], factory=Factory())
        except BrokenPipeError:
            pass  # the reader stopped early
        except BaseException as e:  # noqa: BLE001 -- handed to the reader below
            failure.append(e)
        finally:
            try:
                writer.close()
            except BrokenPipeError:
                pass
            z.close()

    t = threading.Thread(target=pump, daemon=True, name=f"7z-{member}")
    t.start()
    try:
        yield reader
        if failure:
            raise ArchiveError(f"{archive.name}: {type(failure[0]).__name__}: {str(failure[0])[:120]}")
    finally:
        reader.close()
        t.join(timeout=60)


def locate(path: Path, member: str) -> Path | None:
    """Where `member` (Posts.xml / Users.xml) of a dump lives, given the dump's posts path."""
    if path.is_dir():
        p = path / member
        return p if p.exists() else None
    if path.name.endswith(".xml"):
        p = path if member == "Posts.xml" else path.with_name(member)
        return p if p.exists() else None
    if path.name.endswith("-Posts.7z"):  # stackoverflow.com-Posts.7z -> stackoverflow.com-Users.7z
        p = path if member == "Posts.xml" else path.with_name(path.name.replace("-Posts.7z", f"-{member[:-4]}.7z"))
        return p if p.exists() else None
    return path if path.exists() else None  # a whole-site .7z holds every table


@contextmanager
def open_member(path: Path, member: str) -> Iterator[IO[bytes]]:
    if path.name.endswith(".7z"):
        with _stream_7z(path, member) as f:
            yield f
    else:
        with open(path, "rb") as f:
            yield f


def iter_rows(f: IO[bytes]) -> Iterator[dict]:
    """Stream the attributes of every <row> (elements cleared as we go). XMLSyntaxError propagates."""
    for _, el in etree.iterparse(f, events=("end",), tag="row", resolve_entities=False, no_network=True,
                                 huge_tree=True):
        row = dict(el.attrib)
        el.clear(keep_tail=False)
        while el.getprevious() is not None:
            del el.getparent()[0]
        yield row


# --------------------------------------------------------------------------- the stage
class StackExchangeStage(Stage):
    name = "stackexchange"

    def __init__(self, config: StackExchangeSource):
        super().__init__(config)
        man = load_manifest(config.manifest, StackExchangeManifest)
        self.tags = set(t.lower() for t in (config.tags if config.tags is not None else man.tags))
        self.site_category = {s.site: s.category for s in man.sites}
        if config.dumps is not None:
            self.dumps = list(config.dumps)
        else:
            if config.dump_dir is None:
                raise UserError("stackexchange: give `dumps` or `dump_dir` (holding the manifest's dump files)")
            specs = man.sites
            if config.sites is not None:
                known = {s.site: s for s in man.sites}
                if bad := [s for s in config.sites if s not in known]:
                    raise UserError(f"stackexchange: sites not in {config.manifest}: {', '.join(bad)}")
                specs = [known[s] for s in config.sites]
            self.dumps = [SeDump(site=s.site, path=Path(config.dump_dir) / s.files[0]) for s in specs]

    def tasks(self, inputs) -> list[Task]:
        out = []
        for d in self.dumps:
            for part in range(self.config.parts):
                out.append(Task(len(out), (str(d.path),), {"site": d.site, "part": part,
                                                            "users": str(d.users) if d.users else None}))
        return out

    def process(self, task: Task, sink: Sink) -> None:
        work = stage_dir(sink) / ".work"
        work.mkdir(parents=True, exist_ok=True)
        db_path = work / f"{task.index:05d}.sqlite"
        db_path.unlink(missing_ok=True)
        db = sqlite3.connect(db_path)
        try:
            self._run(task, sink, db)
        finally:
            db.close()
            db_path.unlink(missing_ok=True)

    def _run(self, task: Task, sink: Sink, db: sqlite3.Connection) -> None:
        site, part = task.params["site"], task.params["part"]
        path = Path(task.inputs[0])
        posts = locate(path, "Posts.xml")
        if posts is None:
            sink.take()
            sink.quarantine({"path": str(path)}, "dump_missing")
            return
        fetched_at = iso_utc(posts.stat().st_mtime)
        db.executescript("""
            CREATE TABLE q (id INTEGER PRIMARY KEY, accepted INTEGER, row TEXT);
            CREATE TABLE a (parent INTEGER, id INTEGER, score INTEGER, row TEXT);
            CREATE TABLE u (id INTEGER PRIMARY KEY, name TEXT);
        """)
        try:
            with open_member(posts, "Posts.xml") as f:
                for row in iter_rows(f):
                    sink.stat("rows_seen")
                    self._spill(row, part, sink, db)
        except etree.XMLSyntaxError as e:
            sink.take()
            sink.quarantine({"path": posts.name, "error": str(e)[:200]}, "truncated_xml")
        except (ArchiveError, FileNotFoundError) as e:
            sink.take()
            sink.quarantine({"path": posts.name, "error": str(e)[:200]}, "bad_archive")
        db.execute("CREATE INDEX a_parent ON a(parent)")
        self._load_users(task, path, sink, db)
        for qid, accepted, qrow in db.execute("SELECT id, accepted, row FROM q ORDER BY id").fetchall():
            self._emit(site, json.loads(qrow), accepted, db, sink, fetched_at, posts.name)

    def _spill(self, row: dict, part: int, sink: Sink, db: sqlite3.Connection) -> None:
        c = self.config
        kind = row.get("PostTypeId")
        if kind == "1":
            try:
                qid = int(row.get("Id", ""))
            except ValueError:
                sink.take()
                sink.quarantine({"row": {k: row[k] for k in list(row)[:6]}}, "missing_field:Id")
                return
            if qid % c.parts != part:
                return
            tags = parse_tags(row.get("Tags", ""))
            if not any(t.lower() in self.tags for t in tags):
                sink.stat("out_of_scope")
                return
            sink.take()
            stub = {"Id": qid, "Title": row.get("Title")}
            missing = [k for k in QUESTION_FIELDS if not (row.get(k) or "").strip()]
            if missing:
                sink.quarantine(stub, f"missing_field:{missing[0]}")
                return
            try:
                score = int(row["Score"])
            except ValueError:
                sink.quarantine(stub, "bad_field:Score")
                return
            if score < c.min_question_score:
                sink.drop(stub, "low_score")
                return
            accepted = int(row["AcceptedAnswerId"]) if row.get("AcceptedAnswerId", "").isdigit() else None
            db.execute("INSERT OR REPLACE INTO q VALUES (?, ?, ?)", (qid, accepted, json.dumps(row)))
        elif kind == "2":
            parent = row.get("ParentId", "")
            if not parent.isdigit():
                sink.take()
                sink.quarantine({"Id": row.get("Id")}, "answer_missing_field:ParentId")
                return
            hit = db.execute("SELECT accepted FROM q WHERE id = ?", (int(parent),)).fetchone()
            if hit is None:
                return  # an answer to a question out of scope (or of another part)
            missing = [k for k in ANSWER_FIELDS if not (row.get(k) or "").strip()]
            if missing or not row["Id"].isdigit() or not row["Score"].lstrip("-").isdigit():
                sink.take()
                sink.quarantine({"Id": row.get("Id"), "ParentId": parent},
                                f"answer_missing_field:{missing[0] if missing else 'Id/Score'}")
                return
            aid, score = int(row["Id"]), int(row["Score"])
            if aid != hit[0] and score < c.min_answer_score:
                sink.stat("answers_below_threshold")
                return
            db.execute("INSERT INTO a VALUES (?, ?, ?, ?)", (int(parent), aid, score, json.dumps(row)))

    def _load_users(self, task: Task, path: Path, sink: Sink, db: sqlite3.Connection) -> None:
        users_path = Path(task.params["users"]) if task.params.get("users") else locate(path, "Users.xml")
        if users_path is None or not users_path.exists():
            sink.stat("users_xml_missing")
            return
        need = set()
        for (row,) in db.execute("SELECT row FROM q UNION ALL SELECT row FROM a"):
            uid = json.loads(row).get("OwnerUserId", "")
            if uid.lstrip("-").isdigit():
                need.add(int(uid))
        try:
            with open_member(users_path, "Users.xml") as f:
                for row in iter_rows(f):
                    uid = row.get("Id", "")
                    if uid.lstrip("-").isdigit() and int(uid) in need and row.get("DisplayName"):
                        db.execute("INSERT OR REPLACE INTO u VALUES (?, ?)", (int(uid), row["DisplayName"]))
        except (etree.XMLSyntaxError, ArchiveError, FileNotFoundError):
            sink.stat("users_xml_unreadable")  # names fall back to the posts' own fields

    def _author(self, site: str, row: dict, db: sqlite3.Connection) -> dict:
        uid = row.get("OwnerUserId", "")
        name = None
        if uid.lstrip("-").isdigit():
            hit = db.execute("SELECT name FROM u WHERE id = ?", (int(uid),)).fetchone()
            name = hit[0] if hit else None
        name = name or row.get("OwnerDisplayName") or (f"user{uid}" if uid else "anonymous")
        return {"name": name, "url": f"https://{site}/users/{uid}" if uid.isdigit() else None}

    def _emit(self, site: str, q: dict, accepted: int | None, db: sqlite3.Connection, sink: Sink,
              fetched_at: str, dump_name: str) -> None:
        c = self.config
        qid = int(q["Id"])
        stub = {"Id": qid, "Title": q.get("Title")}
        rows = [json.loads(r) for (r,) in db.execute(
            "SELECT row FROM a WHERE parent = ? ORDER BY score DESC, id ASC", (qid,))]
        acc = [r for r in rows if accepted is not None and int(r["Id"]) == accepted]
        others = [r for r in rows if not acc or r is not acc[0]][: c.top_answers]
        chosen = acc + others
        try:
            question = html_to_text(q["Body"])
        except EmptyHTML as e:
            sink.quarantine({**stub, "problem": str(e)}, "empty_body")
            return
        parts = [f"# {' '.join(q['Title'].split())}", question]
        answers_meta = []
        for r in chosen:
            try:
                body = html_to_text(r["Body"])
            except EmptyHTML:
                sink.stat("answers_empty_body")
                continue
            is_acc = bool(acc) and r is acc[0]
            parts.append(f"## {'Accepted answer' if is_acc else 'Answer'} (score {r['Score']})")
            parts.append(body)
            answers_meta.append({"id": int(r["Id"]), "score": int(r["Score"]), "accepted": is_acc,
                                 "author": self._author(site, r, db), "link": f"https://{site}/a/{r['Id']}",
                                 "license": license_of(r), "created_at": r.get("CreationDate")})
        if c.require_answer and not answers_meta:
            sink.drop(stub, "no_answer")
            return
        tags = parse_tags(q["Tags"])
        title = " ".join(q["Title"].split())
        lic = license_of(q)
        link = f"https://{site}/q/{qid}"
        author = self._author(site, q, db)
        cat = categories.from_tags(tags, title)
        if cat == "other" and self.site_category.get(site):
            cat = self.site_category[site]
        sink.write(make_doc("stackexchange", f"{site}/q/{qid}", "\n\n".join(parts), link, {
            "title": title,
            "site": site,
            "question_id": qid,
            "tags": tags,
            "score": int(q["Score"]),
            "view_count": int(q["ViewCount"]) if q.get("ViewCount", "").isdigit() else None,
            "answer_count": int(q["AnswerCount"]) if q.get("AnswerCount", "").isdigit() else None,
            "accepted_answer_id": accepted,
            "created_at": q.get("CreationDate"),
            "license": lic,
            "license_url": LICENSE_URLS.get(lic),
            "author": author,
            "answers": answers_meta,
            "attribution": (f"{title} by {author['name']} ({link})"
                            + "".join(f"; answer by {a['author']['name']} ({a['link']})" for a in answers_meta)
                            + f"; from {site}, licensed under {', '.join(sorted({lic} | {a['license'] for a in answers_meta}))}"),
            "category": categories.check(cat),
            "fetched_at": fetched_at,
            "dump": dump_name,
        }))


register_source(StackExchangeSource, stage_runner(StackExchangeStage))
