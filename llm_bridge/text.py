"""Small text helpers shared by login-node and in-job code (standard library only)."""


def split_top_level(text: str, opening: str = "[", closing: str = "]") -> list[str]:
    """`text` split at the commas outside any bracket: "a[1,2],b" -> ["a[1,2]", "b"]."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += (char in opening) - (char in closing)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return items
