"""The proto as a product: every element is documented, and the docs reach the generated Go.

`buf lint` (COMMENTS, in `make lint`) refuses an element without a comment; this test says the
same from the descriptor protoc builds, and checks that each comment is the doc comment of its
declaration in the committed Go stubs (client/go/sendoncev1), where a Go team reads it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import pytest
from google.protobuf.descriptor_pb2 import FileDescriptorProto, FileDescriptorSet

ROOT = Path(__file__).resolve().parent.parent
PROTO = "sendonce/v1/delivery.proto"
GO_STUBS = ROOT / "client" / "go" / "sendoncev1"

# Field numbers in descriptor.proto, as used by SourceCodeInfo.Location.path.
MESSAGE_TYPE, ENUM_TYPE, SERVICE = 4, 5, 6
MESSAGE_FIELD, ENUM_VALUE, SERVICE_METHOD = 2, 2, 2


@dataclass(frozen=True)
class Element:
    kind: str  # message, field, enum, enum value, service, rpc
    name: str  # as in the proto, e.g. DeliverRequest.uid
    go_declaration: str  # how its Go declaration line starts, e.g. "\tUid "
    comment: str  # the leading comment, as protoc reports it (one " text" per line)


def _go_name(field: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in field.split("_"))


def _descriptor(tmp_path: Path) -> FileDescriptorProto:
    out = tmp_path / "delivery.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={ROOT / 'proto'}",
            f"--proto_path={files('grpc_tools') / '_proto'}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            PROTO,
        ],
        check=True,
    )
    (file,) = FileDescriptorSet.FromString(out.read_bytes()).file
    return file


def _elements(file: FileDescriptorProto) -> list[Element]:
    comments = {
        tuple(location.path): location.leading_comments
        for location in file.source_code_info.location
    }
    elements: list[Element] = []

    def add(kind: str, name: str, go: str, path: tuple[int, ...]) -> None:
        elements.append(Element(kind, name, go, comments.get(path, "")))

    for m, message in enumerate(file.message_type):
        add("message", message.name, f"type {message.name} struct", (MESSAGE_TYPE, m))
        for f, field in enumerate(message.field):
            path = (MESSAGE_TYPE, m, MESSAGE_FIELD, f)
            add("field", f"{message.name}.{field.name}", f"\t{_go_name(field.name)} ", path)
    for e, enum in enumerate(file.enum_type):
        add("enum", enum.name, f"type {enum.name} int32", (ENUM_TYPE, e))
        for v, value in enumerate(enum.value):
            path = (ENUM_TYPE, e, ENUM_VALUE, v)
            add("enum value", value.name, f"\t{enum.name}_{value.name} ", path)
    for s, service in enumerate(file.service):
        add("service", service.name, f"type {service.name}Client interface", (SERVICE, s))
        for r, rpc in enumerate(service.method):
            path = (SERVICE, s, SERVICE_METHOD, r)
            add("rpc", f"{service.name}.{rpc.name}", f"\t{rpc.name}(ctx context.Context", path)
    return elements


@pytest.fixture(scope="module")
def elements(tmp_path_factory: pytest.TempPathFactory) -> list[Element]:
    return _elements(_descriptor(tmp_path_factory.mktemp("proto")))


def test_every_message_field_enum_value_and_rpc_has_a_comment(elements: list[Element]) -> None:
    undocumented = [f"{e.kind} {e.name}" for e in elements if not e.comment.strip()]

    assert len(elements) > 80  # the walk reached every element kind
    assert undocumented == []


def test_the_go_stubs_carry_each_comment_on_its_declaration(elements: list[Element]) -> None:
    go = "\n".join(path.read_text() for path in sorted(GO_STUBS.glob("*.go")))
    missing = []
    for element in elements:
        indent = "\t" if element.go_declaration.startswith("\t") else ""
        lines = element.comment.removesuffix("\n").split("\n")
        doc = "".join(f"{indent}//{line}\n" for line in lines)
        if doc + element.go_declaration not in go:
            missing.append(f"{element.kind} {element.name}")

    assert missing == []


# --- Generating Go: the templates of docs/clients.md, and the breaking check's file options ---

BUF = Path(sys.executable).with_name("buf")
GOBIN = ROOT / ".venv" / "gobin"  # where scripts/gen-proto installs the pinned Go plugins
PLUGINS = ("protoc-gen-go", "protoc-gen-go-grpc")


def _require_go_plugins(tmp_path: Path) -> dict[str, str]:
    """An environment with the pinned Go plugins first on PATH (installed when missing)."""
    if shutil.which("go") is None:
        reason = "`go` is not on PATH: the Go generation checks need a Go toolchain"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: a missing tool fails instead of skipping)")
        pytest.skip(reason)
    if not all((GOBIN / plugin).is_file() for plugin in PLUGINS):
        subprocess.run([ROOT / "scripts" / "gen-proto", tmp_path / "installs"], check=True)
    return {**os.environ, "PATH": f"{GOBIN}{os.pathsep}{os.environ['PATH']}"}


def _without_protoc_version(go: str) -> str:
    """Stub text but the header line naming the compiler (protoc's version, or buf's unknown)."""
    return "\n".join(line for line in go.splitlines() if "protoc  " not in line)


def test_buf_gen_yaml_writes_the_committed_go_package(tmp_path: Path) -> None:
    env = _require_go_plugins(tmp_path)

    subprocess.run([BUF, "generate", "-o", tmp_path], cwd=ROOT, env=env, check=True)

    generated = sorted(p.name for p in (tmp_path / "gen" / "go" / "sendoncev1").iterdir())
    assert generated == ["delivery.pb.go", "delivery_grpc.pb.go"]
    for name in generated:
        ours = (tmp_path / "gen" / "go" / "sendoncev1" / name).read_text()
        committed = (GO_STUBS / name).read_text()
        assert _without_protoc_version(ours) == _without_protoc_version(committed), name


OWN_MODULE_TEMPLATE = """\
version: v2
inputs:
  - directory: {proto}
managed:
  enabled: true
  override:
    - file_option: go_package
      value: github.com/acme/backup-operator/gen/sendoncev1;sendoncev1
clean: true
plugins:
  - local: protoc-gen-go
    out: gen
    opt: module=github.com/acme/backup-operator/gen
  - local: protoc-gen-go-grpc
    out: gen
    opt: module=github.com/acme/backup-operator/gen
"""

OWN_MODULE_MAIN = """\
package main

import (
	"fmt"

	"google.golang.org/grpc"

	sendoncev1 "github.com/acme/backup-operator/gen/sendoncev1"
)

func main() {
	var conn grpc.ClientConnInterface
	client := sendoncev1.NewDeliveryServiceClient(conn)
	fmt.Println(client != nil, sendoncev1.Outcome_OUTCOME_DELIVERED)
}
"""


def test_the_docs_template_generates_into_a_controllers_own_module(tmp_path: Path) -> None:
    """docs/clients.md's "your own copy" template: go_package overridden, a module that vets."""
    env = _require_go_plugins(tmp_path)
    # Only the module cache: tests reach no network (make test downloads client/go's modules).
    env |= {"GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOTOOLCHAIN": "local"}
    module = tmp_path / "backup-operator"
    module.mkdir()
    go_mod = (ROOT / "client" / "go" / "go.mod").read_text()
    (module / "go.mod").write_text(
        go_mod.replace(
            "module github.com/sendonce/sendonce/client/go",
            "module github.com/acme/backup-operator",
        )
    )
    shutil.copy(ROOT / "client" / "go" / "go.sum", module / "go.sum")
    (module / "buf.gen.yaml").write_text(OWN_MODULE_TEMPLATE.format(proto=ROOT / "proto"))
    (module / "main.go").write_text(OWN_MODULE_MAIN)

    subprocess.run([BUF, "generate"], cwd=module, env=env, check=True)
    vet = subprocess.run(
        ["go", "vet", "./..."], cwd=module, env=env, capture_output=True, text=True, check=False
    )

    if "GOPROXY=off" in vet.stderr:
        pytest.skip("client/go's modules are not in the module cache: `make test` downloads them")
    assert sorted(p.name for p in (module / "gen" / "sendoncev1").iterdir()) == [
        "delivery.pb.go",
        "delivery_grpc.pb.go",
    ]
    assert vet.returncode == 0, vet.stderr


def _baseline(tmp_path: Path, proto: str) -> dict[str, str]:
    """The environment that makes scripts/buf-breaking compare with this proto text."""
    (tmp_path / "sendonce" / "v1").mkdir(parents=True)
    (tmp_path / "sendonce" / "v1" / "delivery.proto").write_text(proto)
    path = f"{BUF.parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "SENDONCE_BREAKING_AGAINST": str(tmp_path)}


def _breaking(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = ROOT / "scripts" / "buf-breaking"
    return subprocess.run([script], env=env, capture_output=True, text=True, check=False)


CURRENT = (ROOT / "proto" / PROTO).read_text()
WITHOUT_OPTIONS = "".join(
    line for line in CURRENT.splitlines(keepends=True) if not line.startswith("option ")
)


def test_buf_breaking_accepts_the_file_options_over_a_contract_that_had_none(
    tmp_path: Path,
) -> None:
    assert WITHOUT_OPTIONS != CURRENT

    checked = _breaking(_baseline(tmp_path, WITHOUT_OPTIONS))

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "sets no file options" in checked.stdout


def test_buf_breaking_refuses_a_changed_go_package(tmp_path: Path) -> None:
    other = CURRENT.replace("client/go/sendoncev1;", "client/go/v1;")
    assert other != CURRENT

    checked = _breaking(_baseline(tmp_path, other))

    assert checked.returncode != 0
    assert 'File option "go_package" changed' in checked.stdout


def test_buf_breaking_without_file_options_still_refuses_a_deleted_field(
    tmp_path: Path,
) -> None:
    richer = WITHOUT_OPTIONS.replace(
        "repeated string running_channels = 2;",
        "repeated string running_channels = 2;\n  // Gone.\n  bool gone = 3;",
    )
    assert richer != WITHOUT_OPTIONS

    checked = _breaking(_baseline(tmp_path, richer))

    assert checked.returncode != 0
    assert 'field "3" with name "gone"' in checked.stdout
