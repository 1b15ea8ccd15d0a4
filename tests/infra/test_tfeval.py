"""tfeval, the offline evaluator the Terraform checks stand on: what it expands, what it
leaves as a reference, and that it says so when it cannot evaluate a for_each."""

from __future__ import annotations

from pathlib import Path

from infra.tfeval import Unknown, load, loads, render


def test_for_each_instances_with_each_bound() -> None:
    cfg = loads(
        {
            "main.tf": "locals {\n  topics = { a = { n = 1 }, b = { n = 2 } }\n}\n"
            'resource "google_pubsub_topic" "t" {\n'
            "  for_each = local.topics\n"
            '  name     = "${var.prefix}-${each.key}-${each.value.n}"\n'
            "}\n"
            'variable "prefix" {\n  type    = string\n  default = "p"\n}\n'
        }
    )
    assert [(i.address, i.body["name"]) for i in cfg.instances] == [
        ('google_pubsub_topic.t["a"]', "p-a-1"),
        ('google_pubsub_topic.t["b"]', "p-b-2"),
    ]


def test_resource_attributes_stay_references() -> None:
    cfg = loads(
        {
            "main.tf": 'resource "google_service_account" "sa" {\n  for_each = toset(["x"])\n}\n'
            'resource "google_project_iam_member" "m" {\n'
            '  member = "serviceAccount:${google_service_account.sa["x"].email}"\n'
            '  role   = google_service_account.sa["y"].email\n'  # no such instance
            "}\n"
        }
    )
    (grant,) = cfg.resources("google_project_iam_member")
    assert grant.body["member"] == Unknown('serviceAccount:${google_service_account.sa["x"].email}')
    assert isinstance(grant.body["role"], Unknown) and not grant.body["role"].ref


def test_dynamic_blocks_for_expressions_and_conditionals() -> None:
    cfg = loads(
        {
            "main.tf": 'resource "google_x" "r" {\n'
            '  flag = var.on ? "yes" : "no"\n'
            '  dynamic "f" {\n'
            '    for_each = [for p in [["a", 1], ["b", 2]] : p if p[1] > 1]\n'
            "    content {\n      path = f.value[0]\n    }\n  }\n}\n"
            'variable "on" {\n  type    = bool\n  default = false\n}\n'
        },
        {"on": True},
    )
    (r,) = cfg.instances
    assert r.body["flag"] == "yes" and r.body["f"] == [{"path": "b"}]


def test_modules_expand_with_their_address_and_outputs(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "main.tf").write_text(
        'variable "n" {\n  type = string\n}\n'
        'resource "google_x" "r" {\n  name = var.n\n}\n'
        'output "id" {\n  value = google_x.r.id\n}\n'
    )
    (tmp_path / "main.tf").write_text(
        'module "m" {\n  source   = "./m"\n  for_each = toset(["a"])\n  n        = each.key\n}\n'
        'output "ids" {\n  value = { for k, m in module.m : k => m.id }\n}\n'
    )
    cfg = load(tmp_path)
    assert [(i.address, i.body["name"]) for i in cfg.instances] == [
        ('module.m["a"].google_x.r', "a")
    ]
    assert render(cfg.outputs["ids"]) == 'a = module.m["a"].google_x.r.id'


def test_a_for_each_known_only_after_apply_is_reported() -> None:
    cfg = loads(
        {
            "main.tf": 'resource "google_service_account" "sa" {\n}\n'
            'resource "google_x" "r" {\n  for_each = toset([google_service_account.sa.email])\n}\n'
        }
    )
    assert cfg.unexpanded == ["google_x.r"]
    assert cfg.resources("google_x") == []
