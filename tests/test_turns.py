"""services.api.turns: the fan-out's slots, handed out first come first served, to
coroutines (`take`) and to lined-up futures alike, and never lost to a waiter that left."""

from __future__ import annotations

import asyncio

import pytest

from services.api.turns import Turns


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_slots_are_taken_at_once_until_none_is_free_then_given_in_line_order() -> None:
    async def scenario() -> None:
        turns = Turns(2)
        await turns.take()
        await turns.take()  # both without waiting
        order: list[str] = []

        async def waiter(name: str) -> None:
            await turns.take()
            order.append(name)

        tasks = [asyncio.create_task(waiter(name)) for name in "abc"]
        await settle()
        assert order == [] and turns.waiting == 3
        turns.give()
        await settle()
        assert order == ["a"]
        turns.give()
        turns.give()
        await settle()
        assert order == ["a", "b", "c"]
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


def test_a_lined_up_future_resolves_at_once_when_a_slot_is_free_and_in_turn_when_not() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        turns = Turns(1)
        first = loop.create_future()
        turns.line_up(first)
        assert first.done()  # a free slot, nobody waiting: at once
        taker = asyncio.create_task(turns.take())
        await settle()
        second = loop.create_future()
        turns.line_up(second)  # behind the taker
        turns.give()
        await settle()
        assert taker.done() and not second.done()
        turns.give()
        assert second.done()

    asyncio.run(scenario())


def test_a_waiter_that_leaves_in_line_is_skipped_and_no_slot_is_lost() -> None:
    async def scenario() -> None:
        turns = Turns(1)
        await turns.take()
        leaver = asyncio.create_task(turns.take())
        stayer = asyncio.create_task(turns.take())
        await settle()
        leaver.cancel()
        await asyncio.gather(leaver, return_exceptions=True)
        turns.give()
        await asyncio.wait_for(stayer, 1)  # the slot went past the one that left
        turns.give()
        await asyncio.wait_for(turns.take(), 1)  # and came back to the pool

    asyncio.run(scenario())


def test_a_waiter_cancelled_after_its_slot_came_gives_it_back() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        turns = Turns(1)
        await turns.take()
        woken = loop.create_future()
        turns.line_up(woken)
        holder = asyncio.create_task(turns.holding(woken))
        await settle()
        turns.give()  # the slot is the waiter's now ...
        holder.cancel()  # ... but it is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await holder
        await asyncio.wait_for(turns.take(), 1)  # the slot was given back

    asyncio.run(scenario())


def test_turns_need_a_slot() -> None:
    with pytest.raises(ValueError, match="slots"):
        Turns(0)
