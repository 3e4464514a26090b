# pragma version ~=0.4.3
"""
@title Gas probe for view calls
@notice Measures what a contract caller pays for one static call (for
        example `MarginEngine.check_margin`, `OracleAdapter.price` or a
        feed's `latestRoundData`): the `gasleft()` difference around the
        call, read off with `eth_call`. Benchmarks and gas-ceiling tests
        only; it holds no state and no funds.
@dev The measured span is the CALL opcode (100 gas warm, 2,600 more when
     the target's address is cold), the callee's execution, and the copy of
     at most `_MAX_OUT` bytes of return data. Every storage slot the callee
     reads is cold, as in a fresh transaction. With `warm_target` set, the
     target's address is touched (BALANCE) before the span starts, which
     takes the 2,600 cold-account surcharge out of the figure and leaves the
     callee's own execution plus the 100-gas warm CALL.
"""

_MAX_IN: constant(uint256) = 1_024
_MAX_OUT: constant(uint256) = 1_024


@view
@external
def measure(target: address, data: Bytes[_MAX_IN], warm_target: bool) -> (uint256, bool):
    """
    @notice Gas used by one static call to `target` with calldata `data`.
    @param target The contract to call.
    @param data The ABI-encoded call (selector and arguments).
    @param warm_target Touch `target` first so its address is warm.
    @return The gas spent between just before and just after the call, and
            whether the call succeeded.
    """
    if warm_target:
        # BALANCE warms the address (EIP-2929); the comparison keeps it from
        # being optimised away and is never true for a real account.
        if target.balance == max_value(uint256):
            return 0, False
    success: bool = False
    response: Bytes[_MAX_OUT] = b""
    start: uint256 = msg.gas
    success, response = raw_call(
        target, data, max_outsize=_MAX_OUT, is_static_call=True, revert_on_failure=False
    )
    spent: uint256 = start - msg.gas
    return spent, success
