#!/usr/bin/env python3
"""Extracts the R4 compartment definitions (Patient, Encounter, RelatedPerson, Practitioner,
Device) into a compact table: for each compartment, each resource type in it and the search
parameters that put a resource of that type in the compartment.

    python3 fhir-profiles/tools/extract_r4_compartments.py ../shared/fhir/r4-examples/instances \
        > fhir-profiles/r4/compartments.json

The source files are the official R4 CompartmentDefinition resources (hl7.org/fhir/R4,
compartmentdefinition-*.json). A type listed without parameters is not in the compartment.
"""
import json
import pathlib
import sys

src = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/fhir/r4-examples/instances")
out = {}
for name in ["patient", "encounter", "relatedPerson", "practitioner", "device"]:
    d = json.loads((src / f"CompartmentDefinition-{name}.json").read_text())
    out[d["code"]] = {r["code"]: r["param"] for r in d["resource"] if r.get("param")}
lines = ['{"fhirVersion":"4.0.1","source":"hl7.org/fhir/R4 CompartmentDefinition-*",', ' "compartments":{']
for i, (code, types) in enumerate(out.items()):
    sep = "," if i + 1 < len(out) else ""
    lines.append(f"  {json.dumps(code)}:{json.dumps(types, separators=(',', ':'))}{sep}")
lines.append(" }}")
print("\n".join(lines))
