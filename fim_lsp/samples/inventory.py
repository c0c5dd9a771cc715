"""A small inventory of items: the file `fim-lsp demo` types into, key by key."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Item:
    name: str
    price: float
    quantity: int = 0

    def total(self) -> float:
        return self.price * self.quantity


@dataclass
class Inventory:
    items: dict[str, Item] = field(default_factory=dict)

    def add(self, item: Item) -> None:
        if item.name in self.items:
            self.items[item.name].quantity += item.quantity
        else:
            self.items[item.name] = item

    def remove(self, name: str, quantity: int = 1) -> None:
        item = self.items[name]
        item.quantity -= quantity
        if item.quantity <= 0:
            del self.items[name]

    def total_value(self) -> float:
        return sum(item.total() for item in self.items.values())

    def cheapest(self) -> Item | None:
        if not self.items:
            return None
        return min(self.items.values(), key=lambda item: item.price)


def main() -> None:
    inventory = Inventory()
    inventory.add(Item("apple", 0.5, 10))
    inventory.add(Item("pear", 0.75, 4))
    print(f"total value: {inventory.total_value():.2f}")


if __name__ == "__main__":
    main()
