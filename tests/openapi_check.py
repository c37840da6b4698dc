"""Validates recorded API responses against docs/api/openapi.yaml (OpenAPI 3.1, JSON Schema
2020-12). Usage: openapi_check.py SPEC RESPONSES_JSON. Exits 1 listing every mismatch."""
import json
import re
import sys

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012


def main() -> int:
    spec = yaml.safe_load(open(sys.argv[1]))
    responses = json.load(open(sys.argv[2]))
    registry = Registry().with_resource("urn:spec", Resource.from_contents(spec, default_specification=DRAFT202012))
    templates = []
    for template in spec["paths"]:
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        templates.append((re.compile(pattern), template))
    problems = []
    for r in responses:
        match = [t for p, t in templates if p.match(r["path"])]
        if not match:
            problems.append(f"{r['method']} {r['path']}: no such path in the spec")
            continue
        template = match[0]
        op = spec["paths"][template].get(r["method"].lower())
        if op is None:
            problems.append(f"{r['method']} {template}: method not in the spec")
            continue
        status = str(r["status"])
        if status not in op["responses"]:
            problems.append(f"{r['method']} {template}: status {status} not documented")
            continue
        content = op["responses"][status].get("content", {}).get("application/json")
        if content is None:
            continue
        pointer = "/paths/" + template.replace("~", "~0").replace("/", "~1") + f"/{r['method'].lower()}/responses/{status}/content/application~1json/schema"
        validator = Draft202012Validator({"$ref": "urn:spec#" + pointer}, registry=registry)
        for error in validator.iter_errors(r["body"]):
            problems.append(f"{r['method']} {r['path']} {status}: {error.message} at {list(error.absolute_path)}")
    for p in problems:
        print(p)
    print(f"{len(responses)} responses checked, {len(problems)} mismatches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
