"""Disposition routing: what the warehouse should do with a graded return.

For a returned item of value ``v`` (what the customer paid for the returned units), family ``f``
and grade ``g`` each route's expected recovered value is

    resale share(route, g, f) x v x decay(days waited + days to sale)
        - handling cost(route) - holding cost x days to sale

with a seasonality decay ``(1 - decay_per_day[f]) ** days`` for the time the item waits before it is
sellable again (refurbishment takes longer). Routes not allowed for a grade are skipped; the best
one wins, and the numbers that decided it go with the decision.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from salvage.connectors.events import Grade

ROUTES = ("restock", "open_box", "refurbish", "donate", "dispose")
GRADES = tuple(g.value for g in Grade)
RESALE_ROUTES = ("open_box", "refurbish")  # never for an opened item of a hygiene family


def _open_to(name: str, route: Route, grade: str, hygiene: bool) -> bool:
    """Whether ``route`` (called ``name``) may take an item of ``grade``, of a hygiene family
    or not: opened cosmetics cannot be resold."""
    return grade in route.grades and not (hygiene and grade != "A" and name in RESALE_ROUTES)


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    grades: list[str]  # grades this route may take
    resale_share: float = Field(ge=0, le=1.5)  # of the paid value, before decay
    handling_cost: float = Field(ge=0)
    days_to_sale: float = Field(ge=0)


class DispositionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    routes: dict[str, Route] = {
        "restock": Route(grades=["A"], resale_share=0.95, handling_cost=2.0, days_to_sale=2),
        "open_box": Route(grades=["A", "B"], resale_share=0.7, handling_cost=3.0, days_to_sale=5),
        "refurbish": Route(
            grades=["B", "refurbish"], resale_share=0.6, handling_cost=9.0, days_to_sale=14
        ),
        "donate": Route(  # tax relief on the cost basis, roughly
            grades=["A", "B", "refurbish", "dispose"],
            resale_share=0.1,
            handling_cost=1.0,
            days_to_sale=0,
        ),
        "dispose": Route(
            grades=["A", "B", "refurbish", "dispose"],
            resale_share=0.0,
            handling_cost=1.5,
            days_to_sale=0,
        ),
    }
    holding_cost_per_day: float = Field(0.05, ge=0)
    decay_per_day: dict[str, float] = {  # seasonality: value lost per day of waiting
        "apparel_tops": 0.004,
        "apparel_bottoms": 0.004,
        "footwear": 0.003,
        "beauty_skincare": 0.006,
        "beauty_makeup": 0.006,
        "accessories": 0.002,
        "home": 0.001,
    }
    default_decay_per_day: float = 0.003
    hygiene_families: list[str] = ["beauty_skincare", "beauty_makeup"]  # never resold opened

    @model_validator(mode="after")
    def _every_grade_has_a_route(self) -> DispositionPolicy:
        """Known route names and grades, and for every grade a route open to every family (as
        :func:`decide_disposition` filters them): else a graded return would have no candidate,
        and nothing to choose from in the middle of a run."""
        unknown = sorted(set(self.routes) - set(ROUTES))
        if unknown:
            raise ValueError(f"unknown route(s) {unknown}: routes are {list(ROUTES)}")
        for name, r in self.routes.items():
            bad = sorted(set(r.grades) - set(GRADES))
            if bad:
                raise ValueError(
                    f"route {name!r}: unknown grade(s) {bad}: grades are {list(GRADES)}"
                )
        for grade in GRADES:
            for hygiene in {False, bool(self.hygiene_families)}:
                if not any(_open_to(n, r, grade, hygiene) for n, r in self.routes.items()):
                    raise ValueError(
                        f"grade {grade!r} has no route"
                        + (
                            " for hygiene families, which cannot take open box or refurbishment"
                            if hygiene
                            else ""
                        )
                    )
        return self


def decide_disposition(
    p: DispositionPolicy, grade: str, family: str, value: float, waited_days: float
) -> dict:
    """Best route and the numbers behind every candidate.

    An A-grade top waited a day: restocking recovers the most; opened skincare cannot be resold.

    >>> d = decide_disposition(DispositionPolicy(), "A", "apparel_tops", 40.0, 1.0)
    >>> d["route"], d["expected_recovered_value"], [c["route"] for c in d["candidates"]]
    ('restock', 35.45, ['restock', 'open_box', 'donate', 'dispose'])
    >>> decide_disposition(DispositionPolicy(), "B", "beauty_skincare", 40.0, 1.0)["route"]
    'donate'
    """
    decay = p.decay_per_day.get(family, p.default_decay_per_day)
    hygiene = family in p.hygiene_families
    candidates = []
    for name, r in p.routes.items():
        if not _open_to(name, r, grade, hygiene):
            continue
        days = waited_days + r.days_to_sale
        resale = r.resale_share * value * (1 - decay) ** days
        # days already waited are sunk: they cost value (decay), not future holding
        recovered = resale - r.handling_cost - p.holding_cost_per_day * r.days_to_sale
        candidates.append((round(recovered, 2), name, round(resale, 2), r.handling_cost, days))
    candidates.sort(key=lambda c: (-c[0], ROUTES.index(c[1])))
    best = candidates[0]
    return {
        "route": best[1],
        "expected_recovered_value": best[0],
        "grade": grade,
        "sku_family": family,
        "item_value": round(value, 2),
        "waited_days": round(waited_days, 2),
        "candidates": [
            {"route": n, "recovered": rv, "resale": rs, "handling": h, "days": round(d, 2)}
            for rv, n, rs, h, d in candidates
        ],
    }
