// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title BenchToken
/// @notice OpenZeppelin's ERC-20 with settable decimals and an open `mint`: the one token
///         contract both margincall and Morpho Blue move in the peer benchmark
///         (`make bench-peers`). margincall's collateral and Morpho's loan token are the same
///         deployed instance; Morpho's collateral token is a second instance of this contract.
/// @custom:security Anyone can mint. Local benchmark chains only.
contract BenchToken is ERC20 {
    uint8 private immutable _decimals;

    constructor(string memory name_, string memory symbol_, uint8 decimals_) ERC20(name_, symbol_) {
        _decimals = decimals_;
    }

    /// @notice The number of decimals set at deployment.
    function decimals() public view override returns (uint8) {
        return _decimals;
    }

    /// @notice Mints `amount` to `receiver` (anyone may call: benchmark only).
    function mint(address receiver, uint256 amount) external {
        _mint(receiver, amount);
    }
}
