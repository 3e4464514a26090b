// SPDX-License-Identifier: MIT
pragma solidity 0.8.19;

import {IOracle} from "@morpho-org/morpho-blue/src/interfaces/IOracle.sol";

/// @notice The part of Chainlink's AggregatorV3Interface this oracle reads.
interface IChainlinkFeed {
    function latestRoundData() external view returns (uint80, int256, uint256, uint256, uint80);
}

/// @title FeedOracle
/// @notice A one-feed Morpho Blue oracle: the price of one collateral token unit in loan token
///         units, scaled by 1e36, read from a Chainlink-style feed (in the peer benchmark, the
///         same MockAggregator contract margincall's OracleAdapter reads).
/// @dev Like Morpho's ChainlinkOracleV2 with a single base feed: no staleness check, a negative
///      answer reverts. SCALE_FACTOR = 10^(36 + loan decimals - collateral decimals - feed
///      decimals), so price = answer * SCALE_FACTOR.
/// @custom:security Trusts the feed. Benchmark helper, not a production oracle.
contract FeedOracle is IOracle {
    IChainlinkFeed public immutable FEED;
    uint256 public immutable SCALE_FACTOR;

    constructor(address feed, uint256 feedDecimals, uint256 collateralDecimals, uint256 loanDecimals) {
        FEED = IChainlinkFeed(feed);
        SCALE_FACTOR = 10 ** (36 + loanDecimals - collateralDecimals - feedDecimals);
    }

    /// @inheritdoc IOracle
    function price() external view returns (uint256) {
        (, int256 answer,,,) = FEED.latestRoundData();
        require(answer >= 0, "oracle: negative answer");
        return uint256(answer) * SCALE_FACTOR;
    }
}
